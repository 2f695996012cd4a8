// The sync protocol's frames: they round-trip, and a receiver refuses every frame it must:
// tampered, under another key, cut short, replayed, or stamped too far from its clock.
import Crypto
import Foundation
import SluiceAgent
import SluiceCore
import Testing

private let key = SymmetricKey(data: Data("0123456789abcdef0123456789abcdef".utf8))

private func record(_ n: Int, v6: Bool = false) -> FlowRecord {
    FlowRecord(source: IPAddress(v6 ? "2001:db8::\(n)" : "198.18.0.\(n)")!,
               destination: IPAddress(v6 ? "2001:db8:100::10" : "198.51.100.10")!,
               sourcePort: UInt16(40000 + n).bigEndian, destinationPort: UInt16(80).bigEndian, proto: 6,
               backend: IPAddress(v6 ? "fd10:3::11" : "10.10.3.11")!)
}

private func frame(sequence: UInt64 = 1, timestamp: UInt64 = 1_800_000_000_000, sender: UInt64 = 42) -> SyncFrame {
    SyncFrame(kind: .records, sender: sender, sequence: sequence, timestampMilliseconds: timestamp,
              records: [record(1), record(2, v6: true), record(3)])
}

@Suite("sync wire format")
struct SyncWireTests {
    @Test func aFrameRoundTrips() throws {
        for original in [frame(), SyncFrame(kind: .resyncRequest, sender: 7, sequence: 9, timestampMilliseconds: 5),
                         SyncFrame(kind: .resyncDone, sender: 7, sequence: 10, timestampMilliseconds: 6)] {
            let bytes = original.encoded(key: key)
            #expect(bytes.count == 36 + original.records.count * 56 + 32)
            #expect(try SyncFrame.decode(bytes, key: key) == original)
        }
        let full = SyncFrame(kind: .records, sender: 1, sequence: 1, timestampMilliseconds: 1,
                             records: (0..<SyncFrame.maxRecords).map { record($0 % 250) })
        #expect(full.encoded(key: key).count == 36 + SyncFrame.maxRecords * 56 + 32)
        #expect(try SyncFrame.decode(full.encoded(key: key), key: key) == full)
    }

    @Test func translatedRecordsGoInVersionTwoFramesAndOthersStayVersionOne() throws {
        var translated = record(7)
        (translated.nat, translated.snatIndex, translated.snatPort) = (4, 3, UInt16(20001).bigEndian)
        var half = record(8, v6: true)
        half.nat = 3
        let mixed = SyncFrame(kind: .records, sender: 1, sequence: 2, timestampMilliseconds: 3,
                              records: [record(1), translated, half])
        let bytes = mixed.encoded(key: key)
        #expect(bytes[4] == 2 && bytes.count == 36 + 3 * 60 + 32, "60-byte records")
        #expect(Array(bytes[(36 + 60 + 56)..<(36 + 60 + 60)]) == [4, 3, 0x4e, 0x21], "nat, SNAT slot, port in network order")
        let decoded = try SyncFrame.decode(bytes, key: key)
        #expect(decoded == mixed)
        #expect(decoded.records[0].nat == 0 && decoded.records[2].nat == 3)
        #expect(frame().encoded(key: key)[4] == 1, "a frame without translations is version 1, as older nodes read it")
        var proxied = translated
        proxied.proxySeq = 0x0102_0304
        let full = SyncFrame(kind: .records, sender: 1, sequence: 1, timestampMilliseconds: 1,
                             records: (0..<SyncFrame.maxRecords).map { _ in proxied })
        #expect(full.encoded(key: key).count == SyncFrame.maxSize && SyncFrame.maxSize < 65536)

        // A PROXY v2 flow's record: version 3, its sequence number after the SNAT port.
        let withProxy = SyncFrame(kind: .records, sender: 1, sequence: 2, timestampMilliseconds: 1, records: [mixed.records[0], proxied])
        let proxyBytes = withProxy.encoded(key: key)
        #expect(proxyBytes[4] == 3 && proxyBytes.count == 36 + 2 * 68 + 32, "68-byte records")
        #expect(Array(proxyBytes[(36 + 68 + 60)..<(36 + 68 + 68)]) == [1, 0, 0, 0, 1, 2, 3, 4], "the flag, then the sequence, big-endian")
        #expect(Array(proxyBytes[(36 + 60)..<(36 + 64)]) == [0, 0, 0, 0], "a record without one: no flag")
        let back = try SyncFrame.decode(proxyBytes, key: key)
        #expect(back == withProxy && back.records[0].proxySeq == nil && back.records[1].proxySeq == 0x0102_0304)
    }

    @Test func aTamperedFrameOrAnotherKeyIsABadMAC() {
        let bytes = frame().encoded(key: key)
        // Every byte matters: the header, a record's backend, the MAC itself.
        for index in [5, 17, 36 + 40, bytes.count - 1] {
            var tampered = bytes
            tampered[index] ^= 0x01
            #expect(throws: SyncFrame.Rejection.badMAC) { try SyncFrame.decode(tampered, key: key) }
        }
        let other = SymmetricKey(data: Data("another key of thirty-two bytes!".utf8))
        #expect(throws: SyncFrame.Rejection.badMAC) { try SyncFrame.decode(bytes, key: other) }
    }

    @Test func aFrameCutShortOrPaddedIsMalformed() {
        let bytes = frame().encoded(key: key)
        #expect(throws: SyncFrame.Rejection.malformed) { try SyncFrame.decode(Array(bytes.prefix(40)), key: key) }
        #expect(throws: SyncFrame.Rejection.malformed) { try SyncFrame.decode([UInt8](repeating: 0, count: SyncFrame.maxSize + 1), key: key) }
        // A wrong record count, re-sealed with the right key: the MAC passes, the shape does not.
        var body = Array(bytes.dropLast(32))
        body[33] = 9
        let resealed = body + Array(HMAC<SHA256>.authenticationCode(for: body, using: key))
        #expect(throws: SyncFrame.Rejection.malformed) { try SyncFrame.decode(resealed, key: key) }
    }

    @Test func aReplayedOrStaleFrameIsRefused() {
        var guardian = SyncReplayGuard(skewMilliseconds: 30_000)
        let now: UInt64 = 1_800_000_000_000
        #expect(guardian.check(frame(sequence: 1, timestamp: now), now: now) == .accept)
        #expect(guardian.check(frame(sequence: 2, timestamp: now + 10), now: now + 20) == .accept)
        // The same frame again, or an older one from the same sender: a replay.
        #expect(guardian.check(frame(sequence: 2, timestamp: now + 10), now: now + 30) == .replay)
        #expect(guardian.check(frame(sequence: 1, timestamp: now), now: now + 40) == .replay)
        // Another sender has its own sequence.
        #expect(guardian.check(frame(sequence: 1, timestamp: now, sender: 43), now: now + 50) == .accept)
        // Stamped too long ago (a capture replayed after the receiver forgot the sender), or from the future.
        var fresh = SyncReplayGuard(skewMilliseconds: 30_000)
        #expect(fresh.check(frame(sequence: 3, timestamp: now), now: now + 30_001) == .stale)
        #expect(fresh.check(frame(sequence: 3, timestamp: now + 31_000), now: now) == .stale)
    }
}
