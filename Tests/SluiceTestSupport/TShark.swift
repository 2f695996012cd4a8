// tshark (Debian's package) as the judge of frames on the wire: its expert
// errors for a pcap file, with every checksum check on, flag malformed
// packets and bad IPv4/TCP/UDP/ICMP checksums.
public enum TShark {
    /// tshark's expert errors for the pcap `file`, UDP to `guePort` read as the IP packet it
    /// carries (GUE variant 1) and UDP 53 as plain data (the lab's queries are text, which
    /// tshark would call malformed DNS), and `options` (more decode-as rules); nil when there
    /// are none.
    public static func expertErrors(pcap file: String, guePort: Int, options: [String] = []) async throws -> String? {
        let result = try await Command.check("/usr/bin/tshark", [
            "-r", file, "-q", "-z", "expert,error", "-d", "udp.port==\(guePort),ip", "-d", "udp.port==53,data",
            "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
        ] + options)
        return result.stdout.contains("Errors (") ? result.stdout : nil
    }
}
