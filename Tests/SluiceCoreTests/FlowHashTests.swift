import Testing
@testable import SluiceCore

@Suite struct FlowHashTests {
    // Golden values printed by Linux's jhash_3words (include/linux/jhash.h)
    // compiled with cc; the Swift model must agree with real C bit for bit.
    @Test func jhash3MatchesLinuxJhash3Words() {
        #expect(FlowHash.jhash3(0, 0, 0, initval: 0) == 0x1b68_e557)
        #expect(FlowHash.jhash3(0x0102_0304, 0xdead_beef, 0xcafe_babe, initval: 0x5111_ce00) == 0x203a_3e38)
        #expect(FlowHash.jhash3(0x1500_010a, 0x5000_409c, 6, initval: 0x5111_ce00) == 0xe38a_cefb)
    }

    @Test func anIPv4FlowHashesItsAddressWordAndWirePorts() throws {
        let source = try #require(IPAddress("10.1.0.21"))
        let hash = FlowHash.hash(source: source, sourcePort: 40000, destinationPort: 80, protocolNumber: 6)
        // a = addr[0], b = the wire bytes 9c 40 00 50 loaded little-endian, c = proto.
        #expect(hash == FlowHash.jhash3(0x1500_010a, 0x5000_409c, 6, initval: FlowHash.seed))
        #expect(hash == 0xe38a_cefb)
    }

    @Test func anIPv6FlowHashesAllSixteenSourceBytesWithJhash2() throws {
        let source = try #require(IPAddress("2001:db8::1"))
        let hash = FlowHash.hash(source: source, sourcePort: 12345, destinationPort: 443, protocolNumber: 17)
        // Both from a C program running Linux's generic jhash2 loop and jhash_3words.
        #expect(FlowHash.jhash4(source.words, initval: FlowHash.seed) == 0x96a0_39d1)
        #expect(hash == FlowHash.jhash3(0x96a0_39d1, 0xbb01_3930, 17, initval: FlowHash.seed))
        #expect(hash == 0xfe77_ae45)
    }

    @Test func ipv6SourcesWhoseWordsFoldToTheSameXorHashApart() throws {
        // The two swap their last two words: an XOR fold could not tell them apart.
        let one = try #require(IPAddress("2001:db8::1:2:3:4"))
        let other = try #require(IPAddress("2001:db8::3:4:1:2"))
        #expect(one.words.2 ^ one.words.3 == other.words.2 ^ other.words.3)
        let hashes = [one, other].map {
            FlowHash.hash(source: $0, sourcePort: 12345, destinationPort: 443, protocolNumber: 17)
        }
        #expect(hashes == [0xdc85_7c2a, 0x4ea8_c465])  // from the C program
    }

    @Test func theSeedIsTheOneInLbSharedH() {
        #expect(FlowHash.seed == 0x5111_ce00)
    }

    @Test func hashingIsDeterministic() throws {
        let source = try #require(IPAddress("198.51.100.7"))
        let first = FlowHash.hash(source: source, sourcePort: 5555, destinationPort: 443, protocolNumber: 6)
        for _ in 0..<10 {
            #expect(FlowHash.hash(source: source, sourcePort: 5555, destinationPort: 443, protocolNumber: 6) == first)
        }
    }

    @Test func differentSourcePortsSpreadOverDifferentHashes() throws {
        let source = try #require(IPAddress("198.51.100.7"))
        let hashes = Set((1024..<2048).map {
            FlowHash.hash(source: source, sourcePort: UInt16($0), destinationPort: 80, protocolNumber: 6)
        })
        #expect(hashes.count == 1024)
        let slots = Set(hashes.map { FlowHash.slot(hash: $0, tableSize: 251) })
        #expect(slots.count > 200)  // 1024 balls in 251 bins leave ~4 empty on average
    }

    @Test func protocolAndDestinationPortChangeTheHash() throws {
        let source = try #require(IPAddress("198.51.100.7"))
        let tcp = FlowHash.hash(source: source, sourcePort: 5555, destinationPort: 53, protocolNumber: 6)
        let udp = FlowHash.hash(source: source, sourcePort: 5555, destinationPort: 53, protocolNumber: 17)
        let other = FlowHash.hash(source: source, sourcePort: 5555, destinationPort: 54, protocolNumber: 6)
        #expect(tcp != udp)
        #expect(tcp != other)
    }

    @Test func theSlotIsTheHashModuloTheTableSize() {
        #expect(FlowHash.slot(hash: 0xffff_ffff, tableSize: 65537) == Int(UInt32(0xffff_ffff) % 65537))
        #expect(FlowHash.slot(hash: 65537, tableSize: 65537) == 0)
        #expect(FlowHash.slot(hash: 12, tableSize: 251) == 12)
    }
}
