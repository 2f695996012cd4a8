// The sync protocol's wire format. A node sends sealed frames: a header in the clear
// (authenticated), then its flow records encrypted and authenticated with
// ChaCha20-Poly1305 under a key derived from the fleet's shared secret. A receiver drops a
// frame it cannot open, whose timestamp is outside the allowed clock skew, or whose
// sequence does not increase for its sender (a replay). Integers are big-endian, addresses
// and ports as they sit in the packet.
//
// Sealed (version 4):
//   0 "SLSY"  4 version (4)  5 kind  6 record layout (1, 2 or 3)  7 reserved  8 sender (u64)
//  16 sequence (u64)  24 timestamp, ms since the epoch (u64)  32 record count (u16)
//  34 reserved (2)  36 key id (8)  44 nonce (12)  56 the records, encrypted  ... tag (16)
// The additional data is bytes 0..<56. The key id names which secret sealed the frame, so
// that a receiver holding two (during a rotation) tries one; the nonce is random.
//
// Signed only (versions 1 to 3, what nodes before sealing sent, still accepted so a fleet
// can be upgraded node by node): the same first 36 bytes with the version in byte 4 and
// byte 6 zero, the records in the clear, then an HMAC-SHA256 (32) over all of it under
// the secret itself.
//
// A record: 0 family  1 protocol  2 source port  4 destination port  6 backend family
// 7 reserved  8 source address (16)  24 destination address (the VIP, 16)  40 backend (16);
// layout 2 adds 56 nat (enum sl_forwarding, 0 = none)  57 SNAT slot  58 SNAT port;
// layout 3 adds 60 flags (1 = a PROXY v2 flow)  61 reserved (3)  64 the client's first
// sequence number after its SYN (u32). A frame takes the lowest layout its records need:
// 56, 60 or 68 bytes a record.
import Crypto
import Foundation
import SluiceCore

/// One shared secret of the fleet (a line of `sync.key_file`) and what is derived from it.
public struct SyncKey: Sendable, Equatable {
    /// Names the secret in a sealed frame: HKDF output, so it tells nothing of the secret.
    public let id: [UInt8]
    /// The ChaCha20-Poly1305 key (HKDF-SHA256 of the secret).
    let sealing: SymmetricKey
    /// The secret itself, the HMAC key of signed-only frames.
    let signing: SymmetricKey

    public init(secret: some ContiguousBytes) {
        let material = SymmetricKey(data: secret)
        signing = material
        sealing = HKDF<SHA256>.deriveKey(inputKeyMaterial: material, info: Data("sluice sync v4 seal".utf8), outputByteCount: 32)
        id = HKDF<SHA256>.deriveKey(inputKeyMaterial: material, info: Data("sluice sync v4 key id".utf8), outputByteCount: 8)
            .withUnsafeBytes { Array($0) }
    }

    /// The id as hex, for logs and /metrics.
    public var idHex: String { id.map { String(format: "%02x", $0) }.joined() }

    public static func == (a: SyncKey, b: SyncKey) -> Bool { a.id == b.id }
}

/// The secrets a node holds: the first seals what it sends; every one opens what it receives.
public struct SyncKeyRing: Sendable, Equatable {
    public let keys: [SyncKey]
    public var sealing: SyncKey { keys[0] }

    public init(_ keys: [SyncKey]) {
        precondition(!keys.isEmpty)
        self.keys = keys
    }

    func key(id: ArraySlice<UInt8>) -> SyncKey? { keys.first { $0.id[...] == id } }
}

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
    /// Record layouts: plain, with a translation, also with a PROXY v2 flow's sequence number.
    static let layout: UInt8 = 1
    static let natLayout: UInt8 = 2
    static let proxyLayout: UInt8 = 3
    /// The version of sealed frames; 1 to 3 are signed-only frames of those layouts.
    public static let sealedVersion: UInt8 = 4
    static let headerSize = 36
    static let sealedHeaderSize = 56
    static let recordSize = 56
    static let natRecordSize = 60
    static let proxyRecordSize = 68
    static let macSize = 32
    static let tagSize = 16
    /// Records per frame: a frame stays under 64 KiB.
    public static let maxRecords = 900
    public static let maxSize = sealedHeaderSize + maxRecords * proxyRecordSize + tagSize

    static func recordSize(layout: UInt8) -> Int {
        layout == proxyLayout ? proxyRecordSize : layout == natLayout ? natRecordSize : recordSize
    }

    /// The lowest record layout that carries every record.
    var neededLayout: UInt8 {
        records.contains { $0.proxySeq != nil } ? Self.proxyLayout : records.contains { $0.nat != 0 } ? Self.natLayout : Self.layout
    }

    /// The frame sealed with the ring's first key (version 4), under a random nonce.
    public func encoded(keys: SyncKeyRing) -> [UInt8] {
        precondition(records.count <= Self.maxRecords)
        let layout = neededLayout
        let key = keys.sealing
        let nonce = ChaChaPoly.Nonce()
        var header = self.header(version: Self.sealedVersion, layout: layout)
        header += key.id
        header += Array(nonce)
        // Cannot fail: a valid key and nonce, and a message far below ChaChaPoly's limit.
        let box = try! ChaChaPoly.seal(encodedRecords(layout: layout), using: key.sealing, nonce: nonce, authenticating: header)
        return header + Array(box.ciphertext) + Array(box.tag)
    }

    /// The frame signed only, as nodes before sealing sent it (version = record layout).
    public func encodedSigned(key: SyncKey) -> [UInt8] {
        precondition(records.count <= Self.maxRecords)
        let layout = neededLayout
        var out = header(version: layout, layout: 0) + encodedRecords(layout: layout)
        out += HMAC<SHA256>.authenticationCode(for: out, using: key.signing)
        return out
    }

    private func header(version: UInt8, layout: UInt8) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.sealedHeaderSize)
        out += Self.magic
        out += [version, kind.rawValue, layout, 0]
        out.appendBig(sender)
        out.appendBig(sequence)
        out.appendBig(timestampMilliseconds)
        out.appendBig(UInt16(records.count))
        out += [0, 0]
        return out
    }

    private func encodedRecords(layout: UInt8) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(records.count * Self.recordSize(layout: layout))
        for record in records {
            out += [record.source.family.rawValue, record.proto]
            out.appendRaw(record.sourcePort)
            out.appendRaw(record.destinationPort)
            out += [record.backend.family.rawValue, 0]
            out += record.source.bytes16 + record.destination.bytes16 + record.backend.bytes16
            if layout >= Self.natLayout {
                out += [record.nat, record.snatIndex]
                out.appendRaw(record.snatPort)
            }
            if layout >= Self.proxyLayout {
                out += [record.proxySeq == nil ? 0 : 1, 0, 0, 0]
                out.appendBig(record.proxySeq ?? 0)
            }
        }
        return out
    }

    public enum Rejection: String, Error, Sendable, CaseIterable {
        /// Cut short, a wrong magic, version, kind, count or address.
        case malformed
        /// It does not open (sealed) or its MAC does not match (signed): another secret
        /// with the same id cannot happen, so this is tampering, or a signed-only frame
        /// under a secret this node does not hold.
        case badMAC = "bad_mac"
        /// Sealed under a secret this node does not hold (another fleet, or a key rotated out).
        case unknownKey = "unknown_key"
    }

    /// Opens a sealed frame, or checks a signed-only one against every key of the ring (in
    /// constant time each), and decodes. Timestamps and sequences are the receiver's to
    /// judge (SyncReplayGuard).
    public static func decode(_ bytes: [UInt8], keys: SyncKeyRing) throws(Rejection) -> SyncFrame {
        guard bytes.count >= headerSize, bytes.count <= maxSize, Array(bytes[0..<4]) == magic else { throw .malformed }
        let records: [UInt8], layout: UInt8
        if bytes[4] == sealedVersion {
            guard bytes.count >= sealedHeaderSize + tagSize else { throw .malformed }
            guard let key = keys.key(id: bytes[36..<44]) else { throw .unknownKey }
            let header = bytes[..<sealedHeaderSize]
            guard let nonce = try? ChaChaPoly.Nonce(data: bytes[44..<56]),
                  let box = try? ChaChaPoly.SealedBox(nonce: nonce, ciphertext: bytes[sealedHeaderSize..<(bytes.count - tagSize)],
                                                      tag: bytes[(bytes.count - tagSize)...]),
                  let opened = try? ChaChaPoly.open(box, using: key.sealing, authenticating: header) else { throw .badMAC }
            records = Array(opened)
            layout = bytes[6]
        } else {
            guard bytes.count >= headerSize + macSize else { throw .malformed }
            let body = bytes[..<(bytes.count - macSize)]
            let mac = bytes[(bytes.count - macSize)...]
            guard keys.keys.contains(where: { HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: body, using: $0.signing) }) else {
                throw .badMAC
            }
            records = Array(bytes[headerSize..<(bytes.count - macSize)])
            layout = bytes[4]
        }
        guard (Self.layout...proxyLayout).contains(layout), let kind = Kind(rawValue: bytes[5]) else { throw .malformed }
        return SyncFrame(kind: kind, sender: bytes.big(UInt64.self, at: 8), sequence: bytes.big(UInt64.self, at: 16),
                         timestampMilliseconds: bytes.big(UInt64.self, at: 24),
                         records: try decodeRecords(records, layout: layout, count: Int(bytes.big(UInt16.self, at: 32))))
    }

    private static func decodeRecords(_ bytes: [UInt8], layout: UInt8, count: Int) throws(Rejection) -> [FlowRecord] {
        let size = recordSize(layout: layout)
        guard bytes.count == count * size else { throw .malformed }
        var records: [FlowRecord] = []
        records.reserveCapacity(count)
        for index in 0..<count {
            let at = index * size
            guard let family = IPAddress.Family(rawValue: bytes[at]), let backendFamily = IPAddress.Family(rawValue: bytes[at + 6]),
                  let source = IPAddress(bytes16: bytes[(at + 8)..<(at + 24)], family: family),
                  let destination = IPAddress(bytes16: bytes[(at + 24)..<(at + 40)], family: family),
                  let backend = IPAddress(bytes16: bytes[(at + 40)..<(at + 56)], family: backendFamily) else { throw .malformed }
            var record = FlowRecord(source: source, destination: destination, sourcePort: bytes.raw(UInt16.self, at: at + 2),
                                    destinationPort: bytes.raw(UInt16.self, at: at + 4), proto: bytes[at + 1], backend: backend)
            if layout >= natLayout {
                (record.nat, record.snatIndex, record.snatPort) = (bytes[at + 56], bytes[at + 57], bytes.raw(UInt16.self, at: at + 58))
            }
            if layout >= proxyLayout, bytes[at + 60] & 1 != 0 {
                record.proxySeq = bytes.big(UInt32.self, at: at + 64)
            }
            records.append(record)
        }
        return records
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
