// Finds the next hop's MAC for an interface from the kernel's IPv4 routing and neighbour tables.
import Glibc
import SluiceCore

/// Takes the default route through the interface and its gateway's MAC from the neighbour
/// table; when the neighbour is not resolved yet, a datagram to it makes the kernel ARP.
public enum GatewayResolver {
    public static func resolve(interface: String, timeout: Duration = .seconds(2)) throws(ControlError) -> MACAddress {
        guard let gateway = defaultGateway(interface: interface) else {
            throw .runtime("cannot find the next hop of \(interface): no IPv4 default route via \(interface) (pass --gateway-mac MAC)")
        }
        let link = try NetworkInterface.named(interface)
        if let mac = Neighbours.resolve([gateway: link], timeout: timeout)[gateway] { return mac }
        throw .runtime("cannot resolve the MAC of the gateway \(gateway) on \(interface) (no ARP answer; pass --gateway-mac MAC)")
    }

    /// The gateway of the IPv4 default route through `interface`.
    static func defaultGateway(interface: String) -> IPAddress? {
        Route.v4().first { $0.interface == interface && $0.prefixLength == 0 && $0.gateway != nil }?.gateway
    }
}
