// The one file of BIRD's configuration the agent owns: the VIP routes this node announces
// now, in two static protocols, and the export filter that gives them their attributes.
// The operator's bird.conf includes it before its BGP sessions and exports through the
// filter (`export filter sluice_export;`), so the agent changes what is announced and
// nothing else. MED and communities are set in the filter, not on the static routes:
// BIRD sends MED to an eBGP peer only when the export filter set it.
import SluiceCore

public enum BIRDInclude {
    public static let staticV4 = "sluice_vips4"
    public static let staticV6 = "sluice_vips6"
    public static let filter = "sluice_export"

    /// The file announcing `vips` (none: every route withdrawn), each with its attributes.
    public static func render(_ vips: [IPAddress], attributes: (IPAddress) -> BGPConfig.Attributes) -> String {
        let sorted = vips.sorted { ($0.family == .v4 ? 0 : 1, $0.description) < ($1.family == .v4 ? 0 : 1, $1.description) }
        let v4 = sorted.filter { $0.family == .v4 }, v6 = sorted.filter { $0.family == .v6 }
        var text = "# Written by the Sluice agent: the VIP routes this node announces. Do not edit; the agent rewrites it.\n"
        text += "protocol static \(staticV4) {\n  ipv4;\n"
        for vip in v4 { text += "  route \(vip)/32 blackhole;\n" }
        text += "}\nprotocol static \(staticV6) {\n  ipv6;\n"
        for vip in v6 { text += "  route \(vip)/128 blackhole;\n" }
        text += "}\nfilter \(filter) {\n  if proto != \"\(staticV4)\" && proto != \"\(staticV6)\" then reject;\n"
        for vip in sorted {
            let statements = self.statements(attributes(vip))
            if !statements.isEmpty {
                text += "  if net = \(vip)/\(vip.family == .v4 ? 32 : 128) then { \(statements) }\n"
            }
        }
        return text + "  accept;\n}\n"
    }

    static func statements(_ attributes: BGPConfig.Attributes) -> String {
        var parts: [String] = []
        if let med = attributes.med { parts.append("bgp_med = \(med);") }
        if let localPref = attributes.localPref { parts.append("bgp_local_pref = \(localPref);") }
        for community in attributes.communities { parts.append("bgp_community.add((\(community.asn),\(community.value)));") }
        return parts.joined(separator: " ")
    }
}
