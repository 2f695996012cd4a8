// The sync protocol's wire format: a frame is a header, up to `maxRecords` flow records and
// an HMAC-SHA256 over both under the fleet's shared key. A receiver drops a frame whose
// MAC is wrong, whose timestamp is outside the allowed clock skew, or whose sequence does
// not increase for its sender (a replay). Integers are big-endian, addresses and ports as
// they sit in the packet.
//
//   0 "SLSY"  4 version (1, 2 or 3)  5 kind  6 reserved (2)  8 sender (u64)  16 sequence (u64)
//  24 timestamp, ms since the epoch (u64)  32 record count (u16)  34 reserved (2)
//  36 records, 56 bytes each (version 1), 60 (version 2) or 68 (version 3)  ... HMAC-SHA256 (32)
//
// A record: 0 family  1 protocol  2 source port  4 destination port  6 backend family
// 7 reserved  8 source address (16)  24 destination address (the VIP, 16)  40 backend (16);
// version 2 adds 56 nat (enum sl_forwarding, 0 = none)  57 SNAT slot  58 SNAT port;
// version 3 adds 60 flags (1 = a PROXY v2 flow)  61 reserved (3)  64 the client's first
// sequence number after its SYN (u32). A frame takes the lowest version its records need,
// so a fleet without NAT talks version 1 as before, and an older receiver drops (as
// malformed) only the frames it could not apply anyway.
import Crypto
import Foundation
import SluiceCore

public struct SyncFrame: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        /// Flow records, new since the last frame (or part of a full copy).
        case records = 1
        /// "Send me your whole table": a node that (re)starts asks this of each peer.
        case resyncRequest = 2
        /// The whole table has been sent.
        case resyncDone = 3
    }

    public var kind: Kind
    public var sender: UInt64
    public var sequence: UInt64
    public var timestampMilliseconds: UInt64
    public var records: [FlowRecord]

    public init(kind: Kind, sender: UInt64, sequence: UInt64, timestampMilliseconds: UInt64, records: [FlowRecord] = []) {
        self.kind = kind
        self.sender = sender
        self.sequence = sequence
        self.timestampMilliseconds = timestampMilliseconds
        self.records = records
    }

    static let magic: [UInt8] = Array("SLSY".utf8)
    static let version: UInt8 = 1
    /// The version whose records carry a translation.
    static let natVersion: UInt8 = 2
    /// The version whose records also carry a PROXY v2 flow's sequence number.
    static let proxyVersion: UInt8 = 3
    static let headerSize = 36
    static let recordSize = 56
    static let natRecordSize = 60
    static let proxyRecordSize = 68
    static let macSize = 32
    /// Records per frame: a frame stays under 64 KiB.
    public static let maxRecords = 900
    public static let maxSize = headerSize + maxRecords * proxyRecordSize + macSize

    static func recordSize(version: UInt8) -> Int {
        version == proxyVersion ? proxyRecordSize : version == natVersion ? natRecordSize : recordSize
    }

    /// The frame's bytes, MAC included.
    public func encoded(key: SymmetricKey) -> [UInt8] {
        precondition(records.count <= Self.maxRecords)
        let version = records.contains { $0.proxySeq != nil } ? Self.proxyVersion
            : records.contains { $0.nat != 0 } ? Self.natVersion : Self.version
        var out: [UInt8] = []
        out.reserveCapacity(Self.headerSize + records.count * Self.recordSize(version: version) + Self.macSize)
        out += Self.magic
        out += [version, kind.rawValue, 0, 0]
        out.appendBig(sender)
        out.appendBig(sequence)
        out.appendBig(timestampMilliseconds)
        out.appendBig(UInt16(records.count))
        out += [0, 0]
        for record in records {
            out += [record.source.family.rawValue, record.proto]
            out.appendRaw(record.sourcePort)
            out.appendRaw(record.destinationPort)
            out += [record.backend.family.rawValue, 0]
            out += record.source.bytes16 + record.destination.bytes16 + record.backend.bytes16
            if version >= Self.natVersion {
                out += [record.nat, record.snatIndex]
                out.appendRaw(record.snatPort)
            }
            if version >= Self.proxyVersion {
                out += [record.proxySeq == nil ? 0 : 1, 0, 0, 0]
                out.appendBig(record.proxySeq ?? 0)
            }
        }
        out += HMAC<SHA256>.authenticationCode(for: out, using: key)
        return out
    }

    public enum Rejection: String, Error, Sendable, CaseIterable {
        /// Cut short, a wrong magic, version, kind, count or address.
        case malformed
        /// The MAC does not match: another key, or tampered with.
        case badMAC = "bad_mac"
    }

    /// Checks the MAC (in constant time) and decodes. Timestamps and sequences are the
    /// receiver's to judge (SyncReplayGuard).
    public static func decode(_ bytes: [UInt8], key: SymmetricKey) throws(Rejection) -> SyncFrame {
        guard bytes.count >= headerSize + macSize, bytes.count <= maxSize else { throw .malformed }
        let body = bytes[..<(bytes.count - macSize)]
        guard HMAC<SHA256>.isValidAuthenticationCode(bytes[(bytes.count - macSize)...], authenticating: body, using: key) else {
            throw .badMAC
        }
        guard Array(bytes[0..<4]) == magic, (version...proxyVersion).contains(bytes[4]),
              let kind = Kind(rawValue: bytes[5]) else { throw .malformed }
        let frameVersion = bytes[4]
        let size = recordSize(version: frameVersion)
        let count = Int(bytes.big(UInt16.self, at: 32))
        guard body.count == headerSize + count * size else { throw .malformed }
        var records: [FlowRecord] = []
        records.reserveCapacity(count)
        for index in 0..<count {
            let at = headerSize + index * size
            guard let family = IPAddress.Family(rawValue: bytes[at]), let backendFamily = IPAddress.Family(rawValue: bytes[at + 6]),
                  let source = IPAddress(bytes16: bytes[(at + 8)..<(at + 24)], family: family),
                  let destination = IPAddress(bytes16: bytes[(at + 24)..<(at + 40)], family: family),
                  let backend = IPAddress(bytes16: bytes[(at + 40)..<(at + 56)], family: backendFamily) else { throw .malformed }
            var record = FlowRecord(source: source, destination: destination, sourcePort: bytes.raw(UInt16.self, at: at + 2),
                                    destinationPort: bytes.raw(UInt16.self, at: at + 4), proto: bytes[at + 1], backend: backend)
            if frameVersion >= natVersion {
                (record.nat, record.snatIndex, record.snatPort) = (bytes[at + 56], bytes[at + 57], bytes.raw(UInt16.self, at: at + 58))
            }
            if frameVersion >= proxyVersion, bytes[at + 60] & 1 != 0 {
                record.proxySeq = bytes.big(UInt32.self, at: at + 64)
            }
            records.append(record)
        }
        return SyncFrame(kind: kind, sender: bytes.big(UInt64.self, at: 8), sequence: bytes.big(UInt64.self, at: 16),
                         timestampMilliseconds: bytes.big(UInt64.self, at: 24), records: records)
    }
}

/// What a receiver remembers to refuse replays: per sender, the highest sequence taken. A
/// frame must be newer than that and stamped within `skew` of the receiver's clock, so a
/// frame captured and sent again is refused, now or after the receiver forgot its sender.
public struct SyncReplayGuard: Sendable {
    public enum Verdict: String, Sendable, CaseIterable {
        case accept
        /// The sequence is not above the last one taken from this sender.
        case replay
        /// The timestamp is too far from this node's clock.
        case stale
    }

    public let skewMilliseconds: UInt64
    private var last: [UInt64: (sequence: UInt64, seenAt: UInt64)] = [:]

    public init(skewMilliseconds: UInt64 = 30_000) {
        self.skewMilliseconds = skewMilliseconds
    }

    public mutating func check(_ frame: SyncFrame, now: UInt64) -> Verdict {
        let distance = frame.timestampMilliseconds > now ? frame.timestampMilliseconds - now : now - frame.timestampMilliseconds
        guard distance <= skewMilliseconds else { return .stale }
        if let seen = last[frame.sender], frame.sequence <= seen.sequence { return .replay }
        last[frame.sender] = (frame.sequence, now)
        // A sender silent for longer than the skew can only send fresh frames: forget it.
        if last.count > 64 { last = last.filter { now - $0.value.seenAt <= skewMilliseconds } }
        return .accept
    }
}

extension IPAddress {
    /// The address in 16 bytes, IPv4 in the first four, as in the maps' addr[4].
    var bytes16: [UInt8] {
        bytes + [UInt8](repeating: 0, count: 16 - bytes.count)
    }

    init?(bytes16: ArraySlice<UInt8>, family: Family) {
        self.init(bytes: Array(family == .v4 ? bytes16.prefix(4) : bytes16))
    }
}

extension [UInt8] {
    mutating func appendBig<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }

    /// As it sits in memory (for fields already in network order).
    mutating func appendRaw<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value) { append(contentsOf: $0) }
    }

    func big<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(bigEndian: raw(T.self, at: offset))
    }

    func raw<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
    }
}
