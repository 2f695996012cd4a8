// The sync protocol's frames: sealed frames round-trip and carry their records encrypted;
// signed-only frames (what nodes before sealing sent) are still read; a receiver refuses
// every frame it must: tampered, under a key it does not hold (or no longer holds, after a
// rotation), cut short, replayed, or stamped too far from its clock.
import Crypto
import Foundation
import SluiceAgent
import SluiceCore
import Testing

private let secret = Data("0123456789abcdef0123456789abcdef".utf8)
private let key = SyncKey(secret: secret)
private let ring = SyncKeyRing([key])
private let newKey = SyncKey(secret: Data("the key that replaces it, 32+ b.".utf8))

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

/// Whether `needle` occurs in `haystack`.
private func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    haystack.count >= needle.count && (0...(haystack.count - needle.count)).contains { Array(haystack[$0..<($0 + needle.count)]) == needle }
}

@Suite("sync wire format")
struct SyncWireTests {
    @Test func aSealedFrameRoundTrips() throws {
        for original in [frame(), SyncFrame(kind: .resyncRequest, sender: 7, sequence: 9, timestampMilliseconds: 5),
                         SyncFrame(kind: .resyncDone, sender: 7, sequence: 10, timestampMilliseconds: 6)] {
            let bytes = original.encoded(keys: ring)
            #expect(bytes.count == 56 + original.records.count * 56 + 16)
            #expect(bytes[4] == 4 && bytes[6] == 1, "version 4 (sealed), record layout 1")
            #expect(Array(bytes[36..<44]) == key.id, "the sealing key's id")
            #expect(try SyncFrame.decode(bytes, keys: ring) == original)
        }
        let full = SyncFrame(kind: .records, sender: 1, sequence: 1, timestampMilliseconds: 1,
                             records: (0..<SyncFrame.maxRecords).map { record($0 % 250) })
        #expect(full.encoded(keys: ring).count == 56 + SyncFrame.maxRecords * 56 + 16)
        #expect(try SyncFrame.decode(full.encoded(keys: ring), keys: ring) == full)
    }

    @Test func theRecordsCrossTheWireEncryptedUnderAFreshNonce() throws {
        let original = frame()
        let sealed = original.encoded(keys: ring)
        let signed = original.encodedSigned(key: key)
        // The client's address, the VIP and the backend are in a signed frame's bytes and in no sealed one's.
        for needle in [[198, 18, 0, 1], [198, 51, 100, 10], [10, 10, 3, 11]] as [[UInt8]] {
            #expect(contains(signed, needle), "signed frames carry \(needle) in the clear")
            #expect(!contains(sealed, needle), "a sealed frame shows \(needle)")
        }
        let again = original.encoded(keys: ring)
        #expect(Array(again[44..<56]) != Array(sealed[44..<56]), "each frame has its own nonce")
        #expect(Array(again[56...]) != Array(sealed[56...]), "so the same records never encrypt the same way")
        #expect(try SyncFrame.decode(again, keys: ring) == original)
    }

    @Test func translatedRecordsTakeLayoutTwoAndProxiedOnesLayoutThree() throws {
        var translated = record(7)
        (translated.nat, translated.snatIndex, translated.snatPort) = (4, 3, UInt16(20001).bigEndian)
        var half = record(8, v6: true)
        half.nat = 3
        let mixed = SyncFrame(kind: .records, sender: 1, sequence: 2, timestampMilliseconds: 3,
                              records: [record(1), translated, half])
        // The layout's bytes, as a signed-only frame shows them in the clear.
        let bytes = mixed.encodedSigned(key: key)
        #expect(bytes[4] == 2 && bytes.count == 36 + 3 * 60 + 32, "60-byte records")
        #expect(Array(bytes[(36 + 60 + 56)..<(36 + 60 + 60)]) == [4, 3, 0x4e, 0x21], "nat, SNAT slot, port in network order")
        let decoded = try SyncFrame.decode(bytes, keys: ring)
        #expect(decoded == mixed)
        #expect(decoded.records[0].nat == 0 && decoded.records[2].nat == 3)
        let sealed = mixed.encoded(keys: ring)
        #expect(sealed[6] == 2 && sealed.count == 56 + 3 * 60 + 16)
        #expect(try SyncFrame.decode(sealed, keys: ring) == mixed)
        #expect(frame().encodedSigned(key: key)[4] == 1, "a signed frame without translations is version 1, as the oldest nodes read it")

        var proxied = translated
        proxied.proxySeq = 0x0102_0304
        let full = SyncFrame(kind: .records, sender: 1, sequence: 1, timestampMilliseconds: 1,
                             records: (0..<SyncFrame.maxRecords).map { _ in proxied })
        #expect(full.encoded(keys: ring).count == SyncFrame.maxSize && SyncFrame.maxSize < 65536)

        // A PROXY v2 flow's record: layout 3, its sequence number after the SNAT port.
        let withProxy = SyncFrame(kind: .records, sender: 1, sequence: 2, timestampMilliseconds: 1, records: [mixed.records[0], proxied])
        let proxyBytes = withProxy.encodedSigned(key: key)
        #expect(proxyBytes[4] == 3 && proxyBytes.count == 36 + 2 * 68 + 32, "68-byte records")
        #expect(Array(proxyBytes[(36 + 68 + 60)..<(36 + 68 + 68)]) == [1, 0, 0, 0, 1, 2, 3, 4], "the flag, then the sequence, big-endian")
        #expect(Array(proxyBytes[(36 + 60)..<(36 + 64)]) == [0, 0, 0, 0], "a record without one: no flag")
        for bytes in [proxyBytes, withProxy.encoded(keys: ring)] {
            let back = try SyncFrame.decode(bytes, keys: ring)
            #expect(back == withProxy && back.records[0].proxySeq == nil && back.records[1].proxySeq == 0x0102_0304)
        }
    }

    @Test func aTamperedFrameDoesNotOpenAndAnotherFleetsKeyIsUnknown() {
        let bytes = frame().encoded(keys: ring)
        // Every byte matters: the header (kind, sequence, count), the nonce, a record, the tag.
        for index in [5, 17, 33, 50, 56 + 40, bytes.count - 1] {
            var tampered = bytes
            tampered[index] ^= 0x01
            #expect(throws: SyncFrame.Rejection.badMAC) { try SyncFrame.decode(tampered, keys: ring) }
        }
        var otherID = bytes
        otherID[40] ^= 0x01
        #expect(throws: SyncFrame.Rejection.unknownKey) { try SyncFrame.decode(otherID, keys: ring) }
        let other = SyncKeyRing([SyncKey(secret: Data("another key of thirty-two bytes!".utf8))])
        #expect(throws: SyncFrame.Rejection.unknownKey) { try SyncFrame.decode(bytes, keys: other) }
        // Signed-only frames: tampered, or signed with another secret.
        let signed = frame().encodedSigned(key: key)
        var tampered = signed
        tampered[36 + 40] ^= 0x01
        #expect(throws: SyncFrame.Rejection.badMAC) { try SyncFrame.decode(tampered, keys: ring) }
        #expect(throws: SyncFrame.Rejection.badMAC) { try SyncFrame.decode(signed, keys: other) }
    }

    @Test func duringARotationBothKeysOpenAndAfterItTheOldOneIsRefused() throws {
        let original = frame()
        let before = SyncKeyRing([key])
        let adding = SyncKeyRing([key, newKey])      // step 1: every node accepts the new key
        let switched = SyncKeyRing([newKey, key])    // step 2: every node seals with it
        let after = SyncKeyRing([newKey])            // step 3: the old key is gone
        #expect(adding.sealing == key && switched.sealing == newKey)
        // Whatever a node at one step sends, a node one step away opens.
        for (sender, receiver) in [(before, adding), (adding, switched), (switched, adding), (switched, after), (after, switched)] {
            #expect(try SyncFrame.decode(original.encoded(keys: sender), keys: receiver) == original)
        }
        #expect(Array(original.encoded(keys: switched)[36..<44]) == newKey.id)
        // After the rotation, the old key opens nothing: sealed or signed.
        #expect(throws: SyncFrame.Rejection.unknownKey) { try SyncFrame.decode(original.encoded(keys: before), keys: after) }
        #expect(throws: SyncFrame.Rejection.badMAC) { try SyncFrame.decode(original.encodedSigned(key: key), keys: after) }
    }

    @Test func aFrameCutAnywhereOrPaddedIsRefused() {
        let bytes = frame().encoded(keys: ring)
        #expect(throws: SyncFrame.Rejection.malformed) { try SyncFrame.decode(Array(bytes.prefix(35)), keys: ring) }
        #expect(throws: SyncFrame.Rejection.malformed) { try SyncFrame.decode(Array(bytes.prefix(56 + 15)), keys: ring) }
        #expect(throws: SyncFrame.Rejection.malformed) { try SyncFrame.decode([UInt8](repeating: 0, count: SyncFrame.maxSize + 1), keys: ring) }
        // Cut at every length past the header, or one byte longer: it does not open.
        for length in Set([56 + 16, 56 + 56, bytes.count - 17, bytes.count - 1]) {
            #expect(throws: SyncFrame.Rejection.badMAC) { try SyncFrame.decode(Array(bytes.prefix(length)), keys: ring) }
        }
        #expect(throws: SyncFrame.Rejection.badMAC) { try SyncFrame.decode(bytes + [0], keys: ring) }
        // A signed frame with a wrong record count, signed with the right secret: the MAC
        // passes, the shape does not.
        var body = Array(frame().encodedSigned(key: key).dropLast(32))
        body[33] = 9
        let resigned = body + Array(HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: secret)))
        #expect(throws: SyncFrame.Rejection.malformed) { try SyncFrame.decode(resigned, keys: ring) }
    }

    @Test func noMutationOfASealedFrameIsAccepted() {
        var rng = SystemRandomNumberGenerator()
        let bytes = frame().encoded(keys: ring)
        var refused = 0
        for _ in 0..<5000 {
            var mutated = bytes
            switch Int.random(in: 0..<3, using: &rng) {
            case 0: mutated[Int.random(in: 0..<mutated.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
            case 1: mutated = Array(mutated.prefix(Int.random(in: 0..<mutated.count, using: &rng)))
            default: mutated.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...mutated.count, using: &rng))
            }
            if (try? SyncFrame.decode(mutated, keys: ring)) == nil { refused += 1 }
        }
        #expect(refused == 5000)
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
