// End to end through the namespace lab (scripts/lab.sh): real TCP and UDP
// clients and servers in their own namespaces, the balancer in XDP on lb0,
// backends decapsulating in XDP and answering the client directly. Every test
// brings up its own lab under a unique name and takes it down however it ends,
// so the tests run in parallel with each other and with the other suites (as many
// labs at once as LabSlots allows).
import Foundation
import SluiceTestSupport
import Testing

@Suite("the namespace lab, end to end")
struct LabTests {
    static let vip4 = "198.51.100.10"
    static let vip6 = "2001:db8:100::10"
    static let vip4in6 = "198.51.100.20"
    static let clientV4 = "10.10.1.2"
    static let clientV6 = "fd10:1::2"
    /// The client's interface in NAME-client (lab.sh's topology; not in `info`).
    static let clientInterface = "eth0"

    /// Log lines of `backend` for requests to `local` (`VIP:PORT`).
    func logged(_ lab: Lab, _ backend: String, proto: String, local: String) throws -> [Lab.LogLine] {
        try lab.log(of: backend).filter { $0.proto == proto && $0.local == local }
    }

    @Test("300 new HTTP connections to web: all answered in the 1:2:3 weights, by backends that see the client, with no reply crossing the balancer")
    func webWeightedDirectServerReturn() async throws {
        try await Lab.withLab { lab in
            let count = 300
            let before = try await lab.traffic()
            let result = try await lab.client(.http, Self.vip4, 80, count: count)
            let traffic = try await lab.traffic() - before
            try #require(result.ok == count && result.failed == 0, "HTTP burst failed:\n\(result.output)")

            // Maglev shares follow the weights (info's web_weights, be1:be2:be3).
            let weights = try lab.info("web_weights").split(separator: ",").compactMap { Int($0) }
            try #require(weights.count == lab.backends.count, "web_weights: \(lab.info)")
            for problem in lab.weightProblems(result, weights: weights) { Issue.record("\(problem)") }
            // Every backend answered and saw the client's own address; no reply crossed lb0.
            for backend in lab.backends {
                #expect(!(try logged(lab, backend, proto: "http", local: "\(Self.vip4):80")).isEmpty,
                        "\(backend) logged no HTTP request to \(Self.vip4):80")
            }
            for problem in try lab.clientAddressProblems(result, proto: "http", local: "\(Self.vip4):80", client: Self.clientV4) {
                Issue.record("\(problem)")
            }
            for problem in traffic.directReturnProblems(flows: count, tcp: true) { Issue.record("\(problem)") }
        }
    }

    @Test("300 UDP queries to dns: all answered, by every backend, which see the client")
    func udpSpreadsOverBackends() async throws {
        try await Lab.withLab { lab in
            let result = try await lab.client(.udp, Self.vip4, 53, count: 300)
            try #require(result.ok == 300 && result.failed == 0, "UDP burst failed:\n\(result.output)")
            for backend in lab.backends {
                #expect((result.backends[backend] ?? 0) > 0, "\(backend) answered no query: \(result.backends)")
                let clients = Set(try logged(lab, backend, proto: "udp", local: "\(Self.vip4):53").map(\.client))
                #expect(clients == [Self.clientV4], "\(backend) saw clients \(clients)")
            }
        }
    }

    struct IPv6Case: Sendable, CustomTestStringConvertible {
        var service: String
        var vip: String
        var client: String
        /// How the server logs its local end: `VIP:PORT`, IPv6 unbracketed.
        var local: String { "\(vip):80" }
        var testDescription: String { "\(service) (\(vip) from \(client))" }
    }

    @Test("150 new HTTP connections over IPv6 tunnels: all answered by every backend, which see the client",
          arguments: [
              IPv6Case(service: "web6 6in6", vip: LabTests.vip6, client: LabTests.clientV6),
              IPv6Case(service: "web4in6 4in6", vip: LabTests.vip4in6, client: LabTests.clientV4),
          ])
    func ipv6Tunnels(_ test: IPv6Case) async throws {
        try await Lab.withLab { lab in
            let result = try await lab.client(.http, test.vip, 80, count: 150)
            try #require(result.ok == 150 && result.failed == 0, "\(test.service) burst failed:\n\(result.output)")
            for backend in lab.backends {
                #expect((result.backends[backend] ?? 0) > 0, "\(backend) answered nothing: \(result.backends)")
                let lines = try logged(lab, backend, proto: "http", local: test.local)
                let clients = Set(lines.map(\.client))
                #expect(!lines.isEmpty && clients == [test.client],
                        "\(backend) logged \(lines.count) requests to \(test.local) from \(clients), want \(test.client)")
            }
        }
    }

    @Test("a long-lived TCP connection survives a backend change and its backend's drain; new connections avoid the drained one")
    func sessionSurvivesChangeAndDrain() async throws {
        try await Lab.withLab { lab in try await lab.withSession(Self.vip4, 7, interval: 0.1) { session in
            func describe(_ state: Lab.Session.State?) -> String {
                "state \(String(describing: state)); client output: \(session.output)"
            }

            let started = try await session.wait { $0.ok >= 3 }
            let backend = try #require(started?.backend, "the session did not start: \(describe(started))")
            try #require(started?.ok ?? 0 >= 3 && started?.failed == 0, "\(describe(started))")
            let address = try lab.info("\(backend)_v4")

            // A new set that keeps the session's backend: the flow stays where it is.
            let others = lab.backends.filter { $0 != backend }
            let grown = "be1:1,be2:1,be3:1"
            try await lab.applyEcho(grown)
            let okBefore = session.state()?.ok ?? 0
            let afterChange = try await session.wait { $0.ok >= okBefore + 3 }
            #expect((afterChange?.ok ?? 0) >= okBefore + 3 && afterChange?.failed == 0 && afterChange?.closed == false,
                    "after applying \(grown): \(describe(afterChange))")
            #expect(afterChange?.backend == backend, "\(describe(afterChange))")

            // Drain the session's backend: established flows stay, new ones go elsewhere.
            let drain = ([backend + ":0"] + others.map { $0 + ":1" }).joined(separator: ",")
            try await lab.applyEcho(drain)
            let okBeforeDrain = session.state()?.ok ?? 0
            let afterDrain = try await session.wait { $0.ok >= okBeforeDrain + 3 }
            #expect((afterDrain?.ok ?? 0) >= okBeforeDrain + 3 && afterDrain?.failed == 0 && afterDrain?.closed == false,
                    "after draining with \(drain): \(describe(afterDrain))")
            #expect(afterDrain?.backend == backend, "\(describe(afterDrain))")

            let status = try await lab.status()
            let echo = try #require(status.service("echo"), "no echo service in status: \(status)")
            let drained = echo.backends.first { $0.address == address }
            #expect(drained?.state == "drained" && drained?.weight == 0,
                    "\(backend) (\(address)) is not drained: \(echo.backends)")

            let fresh = try await lab.client(.echo, Self.vip4, 7, count: 30)
            #expect(fresh.ok == 30 && fresh.failed == 0, "new echo connections failed:\n\(fresh.output)")
            #expect(fresh.backends[backend] == nil, "new connections reached drained \(backend): \(fresh.backends)")

            // SIGTERM ends the client cleanly, still without a failed exchange.
            let status0 = await session.stop()
            let final = session.state()
            #expect(status0 == 0 && final?.closed == true && final?.failed == 0,
                    "session exit \(status0); \(describe(final))")
        } }
    }

    @Test("down removes the lab's namespaces, directory and bpffs, and may run twice")
    func downCleansUp() async throws {
        // Down by hand (down is what is tested); withLab's teardown then does nothing.
        try await Lab.withLab { lab in
            let namespaces = lab.namespaces, directory = lab.directory, bpffs = try lab.info("bpffs")
            try #require(namespaces.count == 6, "namespaces in info: \(lab.info)")
            let listed = await TestNamespace.list()
            try #require(Set(namespaces).isSubset(of: Set(listed)), "not every namespace exists: \(listed)")
            try #require(Lab.isMounted(bpffs), "\(bpffs) is not mounted while the lab is up")

            try await lab.down()

            let left = Set(namespaces).intersection(await TestNamespace.list())
            #expect(left.isEmpty, "namespaces left behind: \(left)")
            #expect(!FileManager.default.fileExists(atPath: directory), "\(directory) is left behind")
            #expect(!Lab.isMounted(bpffs), "\(bpffs) is still mounted")
            let again = try await Lab.run("down", lab.name)
            #expect(again.status == 0, "a second down failed:\n\(again)")
        }
    }

    @Test("a bring-up that fails midway exits non-zero and leaves nothing behind")
    func failedBringUpCleansUp() async throws {
        // A lab's worth of namespaces for a while: it takes a lab's permit like any lab.
        try await LabSlots.shared.withPermits {
            let name = Lab.uniqueName()
            // The servers exit at once: lab.sh fails waiting for them, after the namespaces,
            // veths, bpffs and XDP programs are in place.
            let result = try await Lab.run("up", name, environment: ["PYTHON": "/bin/false"])
            let left = await TestNamespace.list().filter { $0.hasPrefix(name + "-") }
            let directory = "\(Lab.root)/sluice-lab-\(name)"
            let dirLeft = FileManager.default.fileExists(atPath: directory), mounted = Lab.isMounted(directory + "/bpffs")
            _ = try? await Lab.run("down", name)  // whatever it left

            #expect(result.status != 0, "lab.sh up with PYTHON=/bin/false succeeded:\n\(result)")
            #expect(result.stderr.contains("cleaning up"), "no cleanup message:\n\(result)")
            #expect(left.isEmpty, "namespaces left behind: \(left)\n\(result)")
            #expect(!dirLeft, "\(directory) is left behind\n\(result)")
            #expect(!mounted, "\(directory)/bpffs is still mounted")
        }
    }

    @Test("two labs up at once both serve HTTP",
          .enabled(if: LabSlots.shared.permits >= 2, "SLUICE_LAB_SLOTS allows one lab at a time"))
    func twoLabsSideBySide() async throws {
        try await Lab.withLabs(2) { labs in
            let first = labs[0], second = labs[1]
            #expect(first.name != second.name)
            async let a = first.client(.http, Self.vip4, 80, count: 50)
            async let b = second.client(.http, Self.vip4, 80, count: 50)
            let (resultA, resultB) = try await (a, b)
            #expect(resultA.ok == 50 && resultA.failed == 0, "lab \(first.name):\n\(resultA.output)")
            #expect(resultB.ok == 50 && resultB.failed == 0, "lab \(second.name):\n\(resultB.output)")
        }
    }
}
