// The `bgp:` section of the agent's configuration: how the agent reaches the node's BIRD
// (its control socket, and the one file of BIRD's configuration the agent owns), what the
// announcements carry (communities, MED, local preference; per VIP if need be), when a VIP
// counts as servable, and how long a drain and a SIGTERM wait for new flows to stop.
import Foundation
import SluiceCore
import Yams

public struct BGPConfig: Sendable, Equatable {
    /// A standard BGP community, `ASN:VALUE` (RFC 1997).
    public struct Community: Sendable, Equatable, Hashable, CustomStringConvertible {
        public var asn: UInt16
        public var value: UInt16
        public var description: String { "\(asn):\(value)" }

        public init?(_ text: String) {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let asn = UInt16(parts[0]), let value = UInt16(parts[1]) else { return nil }
            self.asn = asn
            self.value = value
        }
    }

    /// What the announcements of a VIP carry. Unset values are left to BIRD (and its peers).
    public struct Attributes: Sendable, Equatable {
        public var communities: [Community] = []
        /// MULTI_EXIT_DISC: the lower one wins between nodes announcing into one AS (a
        /// standby announces a higher one).
        public var med: UInt32?
        /// LOCAL_PREF, for iBGP peers (eBGP ignores it).
        public var localPref: UInt32?

        public init() {}

        /// `self` with what `override` sets replacing it (communities replace, not add).
        func overlaid(_ override: Attributes, communitiesSet: Bool) -> Attributes {
            var result = self
            if communitiesSet { result.communities = override.communities }
            if let med = override.med { result.med = med }
            if let localPref = override.localPref { result.localPref = localPref }
            return result
        }
    }

    /// When a VIP shared by several services (ports) is servable.
    public enum AnnounceWhen: String, Sendable, Equatable, CaseIterable {
        /// While at least one of its services has a backend up: a VIP is never withdrawn
        /// while it still serves something.
        case anyServiceUp = "any_service_up"
        /// Only while every one of its services has a backend up.
        case allServicesUp = "all_services_up"
    }

    public static let defaultSocket = "/run/bird/bird.ctl"
    public static let defaultIncludeFile = "/var/lib/sluice/bird-vips.conf"

    public var birdSocket = BGPConfig.defaultSocket
    /// The file the agent writes (and BIRD's configuration includes): two static protocols
    /// holding the VIP routes to announce, and the export filter that sets their attributes.
    public var includeFile = BGPConfig.defaultIncludeFile
    public var attributes = Attributes()
    /// Per-VIP attributes over the global ones.
    public var vipAttributes: [IPAddress: Attributes] = [:]
    public var announceWhen = AnnounceWhen.anyServiceUp
    /// `lbctl drain` waits at most this long for new flows to stop arriving.
    public var drainTimeoutMilliseconds = 30_000
    /// New flows have stopped once none arrived for this long.
    public var drainQuietMilliseconds = 2_000
    /// On SIGTERM: withdraw every VIP, then wait up to this long (or until new flows stop)
    /// before exiting. 0: withdraw and exit.
    public var shutdownGraceMilliseconds = 10_000

    public init() {}

    /// What `vip`'s announcement carries.
    public func attributes(for vip: IPAddress) -> Attributes {
        vipAttributes[vip] ?? attributes
    }

    static let keys = ["bird_socket", "include_file", "communities", "med", "local_pref", "announce_when",
                       "drain_timeout", "drain_quiet", "shutdown_grace", "vips"]
    static let vipKeys = ["vip", "communities", "med", "local_pref"]

    static func parse(_ node: Node, reader: inout YAMLReader) throws(ConfigError) -> BGPConfig {
        let fields = try reader.mapping(node, path: "bgp", allowed: keys)
        var config = BGPConfig()
        if let socket = fields.values["bird_socket"] { config.birdSocket = try reader.string(socket, field: "bgp.bird_socket") }
        if let include = fields.values["include_file"] {
            config.includeFile = try reader.string(include, field: "bgp.include_file")
        }
        config.attributes = try parseAttributes(fields, reader: reader).attributes
        if let when = fields.values["announce_when"] {
            let text = try reader.scalar(when, field: "bgp.announce_when")
            guard let value = AnnounceWhen(rawValue: text) else {
                throw reader.error(at: when, field: "bgp.announce_when", "\(String(reflecting: text)) is not one of "
                                   + AnnounceWhen.allCases.map(\.rawValue).joined(separator: ", "))
            }
            config.announceWhen = value
        }
        func duration(_ key: String, _ range: ClosedRange<Int>) throws(ConfigError) -> Int? {
            guard let node = fields.values[key] else { return nil }
            return try reader.duration(node, field: fields.field(key), range: range, examples: "2s, 30s")
        }
        if let value = try duration("drain_timeout", 0...3_600_000) { config.drainTimeoutMilliseconds = value }
        if let value = try duration("drain_quiet", 100...600_000) { config.drainQuietMilliseconds = value }
        if let value = try duration("shutdown_grace", 0...3_600_000) { config.shutdownGraceMilliseconds = value }
        if let vips = fields.values["vips"] {
            for (index, item) in try reader.sequence(vips, field: "bgp.vips").enumerated() {
                let path = "bgp.vips[\(index)]"
                let vipFields = try reader.mapping(item, path: path, allowed: vipKeys)
                let vipNode = try reader.required(vipFields, "vip")
                let text = try reader.scalar(vipNode, field: vipFields.field("vip"))
                guard let vip = IPAddress(text) else {
                    throw reader.error(at: vipNode, field: vipFields.field("vip"), "\(String(reflecting: text)) is not an IP address")
                }
                guard config.vipAttributes[vip] == nil else {
                    throw reader.error(at: vipNode, field: vipFields.field("vip"), "\(vip) is listed twice")
                }
                let (override, communitiesSet) = try parseAttributes(vipFields, reader: reader)
                config.vipAttributes[vip] = config.attributes.overlaid(override, communitiesSet: communitiesSet)
            }
        }
        return config
    }

    /// `communities`, `med` and `local_pref` of `fields`; whether `communities` was there.
    private static func parseAttributes(_ fields: YAMLReader.Fields, reader: YAMLReader) throws(ConfigError)
        -> (attributes: Attributes, communitiesSet: Bool) {
        var attributes = Attributes()
        if let list = fields.values["communities"] {
            for (index, item) in try reader.sequence(list, field: fields.field("communities")).enumerated() {
                let field = fields.field("communities") + "[\(index)]"
                let text = try reader.scalar(item, field: field)
                guard let community = Community(text) else {
                    throw reader.error(at: item, field: field, "\(String(reflecting: text)) is not a BGP community ASN:VALUE, each 0-65535 (e.g. \"65100:100\")")
                }
                attributes.communities.append(community)
            }
        }
        func number(_ key: String) throws(ConfigError) -> UInt32? {
            guard let node = fields.values[key] else { return nil }
            let text = try reader.scalar(node, field: fields.field(key))
            guard let value = UInt32(text) else {
                throw reader.error(at: node, field: fields.field(key), "\(String(reflecting: text)) is not a whole number from 0 to 4294967295")
            }
            return value
        }
        attributes.med = try number("med")
        attributes.localPref = try number("local_pref")
        return (attributes, fields.values["communities"] != nil)
    }
}
