import Testing
@testable import SluiceCore

@Suite struct IPAddressTests {
    @Test(arguments: [
        ("10.1.0.21", IPAddress.Family.v4, "10.1.0.21"),
        ("0.0.0.0", .v4, "0.0.0.0"),
        ("255.255.255.255", .v4, "255.255.255.255"),
        ("2001:db8::1", .v6, "2001:db8::1"),
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", .v6, "2001:db8::1"),
        ("::", .v6, "::"),
        ("::ffff:192.0.2.1", .v6, "::ffff:192.0.2.1"),
    ])
    func goodAddressesParseAndPrintCanonically(text: String, family: IPAddress.Family, canonical: String) throws {
        let address = try #require(IPAddress(text))
        #expect(address.family == family)
        #expect(address.bytes.count == (family == .v4 ? 4 : 16))
        #expect(address.description == canonical)
        #expect(IPAddress(address.description) == address)
    }

    @Test(arguments: [
        "", "10.1.0", "10.1.0.256", "10.1.0.21/32", " 10.1.0.21", "10.1.0.21 ", "010.1.0.21",
        "fe80::1%eth0", "2001:db8::1/64", "[2001:db8::1]", "2001:db8:::1", "1:2:3:4:5:6:7:8:9",
        "web", "10.1.0.21\0junk", "0x0a010015",
    ])
    func badAddressesAreRejected(text: String) {
        #expect(IPAddress(text) == nil)
    }

    @Test func anIPv4AddressFillsWordZeroAsALittleEndianLoad() throws {
        let address = try #require(IPAddress("10.1.0.21"))
        let words = address.words
        #expect(words.0 == 0x1500_010a)
        #expect(words.1 == 0 && words.2 == 0 && words.3 == 0)
    }

    @Test func anIPv6AddressFillsAllFourWords() throws {
        let address = try #require(IPAddress("2001:db8::1"))
        let words = address.words
        #expect(words.0 == 0xb80d_0120)
        #expect(words.1 == 0)
        #expect(words.2 == 0)
        #expect(words.3 == 0x0100_0000)
    }

    @Test(arguments: ["10.1.0.21", "192.0.2.255", "2001:db8:ffff::10", "fe80::1:2:3:4"])
    func wordsRoundTrip(text: String) throws {
        let address = try #require(IPAddress(text))
        #expect(IPAddress(words: address.words, family: address.family) == address)
        #expect(IPAddress(words: address.words, family: address.family.rawValue) == address)
    }

    @Test func wordsWithAnUnknownFamilyOrIPv4GarbageAreRejected() {
        #expect(IPAddress(words: (1, 0, 0, 0), family: UInt8(0)) == nil)
        #expect(IPAddress(words: (1, 2, 0, 0), family: .v4) == nil)
    }

    @Test func bytesOfTheWrongLengthAreRejected() {
        #expect(IPAddress(bytes: [1, 2, 3]) == nil)
        #expect(IPAddress(bytes: [10, 1, 0, 21])?.description == "10.1.0.21")
    }

    @Test func addressesSortIPv4FirstThenNumerically() throws {
        let sorted = ["2001:db8::1", "10.0.0.10", "10.0.0.9", "::1"].compactMap(IPAddress.init).sorted()
        #expect(sorted.map(\.description) == ["10.0.0.9", "10.0.0.10", "::1", "2001:db8::1"])
    }
}

@Suite struct MACAddressTests {
    @Test(arguments: ["aa:bb:cc:dd:ee:ff", "AA:BB:CC:DD:EE:FF", "aa-bb-cc-dd-ee-ff", "Aa-bB-cc-DD-ee-ff"])
    func macAddressesParseInEitherCaseAndSeparator(text: String) throws {
        let mac = try #require(MACAddress(text))
        #expect(mac.bytes == [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
        #expect(mac.description == "aa:bb:cc:dd:ee:ff")
    }

    @Test func smallBytesPrintWithALeadingZero() throws {
        #expect(try #require(MACAddress("02:00:00:00:0a:01")).description == "02:00:00:00:0a:01")
    }

    @Test(arguments: ["", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "aa:bb-cc:dd:ee:ff", "a:bb:cc:dd:ee:ff",
                      "gg:bb:cc:dd:ee:ff", "aabb.ccdd.eeff", "+a:bb:cc:dd:ee:ff"])
    func badMACAddressesAreRejected(text: String) {
        #expect(MACAddress(text) == nil)
    }
}
