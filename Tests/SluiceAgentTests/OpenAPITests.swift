// docs/openapi.yaml is the agent's API as its users read it. Its routes must be exactly the
// ones the agent's router holds, and against a real agent every documented read answers one
// of its documented statuses with the keys its schema requires, and every write that needs
// the token answers 401 without it (a documented status) and changes nothing.
import Foundation
import SluiceAgent
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Testing
import Yams

/// docs/openapi.yaml, read with Yams, `$ref`s followed on demand.
struct OpenAPIDocument {
    struct Operation {
        var method: String
        var path: String
        var body: [String: Any]
        var needsToken: Bool { body["security"] != nil }
        var statuses: Set<Int> { Set(OpenAPIDocument.mapping(body["responses"]).keys.compactMap { Int($0) }) }
        var id: String { "\(method) \(path)" }
    }

    static let path = Lbctl.packageRoot.appendingPathComponent("docs/openapi.yaml").path
    let root: [String: Any]

    init() throws {
        root = Self.mapping(try Yams.load(yaml: try String(contentsOfFile: Self.path, encoding: .utf8)))
    }

    /// A YAML mapping as [String: Any] (Yams gives [AnyHashable: Any]); empty when not one.
    static func mapping(_ node: Any?) -> [String: Any] {
        if let node = node as? [String: Any] { return node }
        guard let node = node as? [AnyHashable: Any] else { return [:] }
        return Dictionary(uniqueKeysWithValues: node.map { ("\($0.key)", $0.value) })
    }

    var operations: [Operation] {
        Self.mapping(root["paths"]).flatMap { path, item in
            Self.mapping(item).map { Operation(method: $0.key.uppercased(), path: path, body: Self.mapping($0.value)) }
        }.sorted { $0.id < $1.id }
    }

    /// `node` with a `$ref` to "#/components/…" replaced by what it names.
    func resolve(_ node: Any?) -> [String: Any] {
        var node = Self.mapping(node)
        while let reference = node["$ref"] as? String, reference.hasPrefix("#/") {
            node = reference.dropFirst(2).split(separator: "/").reduce(root as Any?) { Self.mapping($0)[String($1)] }
                .map(Self.mapping) ?? [:]
        }
        return node
    }

    /// The JSON schema of `operation`'s answer with `status`, nil when it is not JSON.
    func jsonSchema(_ operation: Operation, status: Int) -> [String: Any]? {
        let response = resolve(Self.mapping(operation.body["responses"])[String(status)])
        guard let json = Self.mapping(response["content"])["application/json"] else { return nil }
        return resolve(Self.mapping(json)["schema"])
    }

    /// Where `value` lacks a key its schema requires, recursing into objects and arrays.
    func missingKeys(_ value: Any, schema: [String: Any], at place: String = "") -> [String] {
        var missing: [String] = []
        if let object = value as? [String: Any] {
            for key in schema["required"] as? [Any] ?? [] where object["\(key)"] == nil { missing.append("\(place).\(key)") }
            for (key, property) in Self.mapping(schema["properties"]) {
                if let inner = object[key], !(inner is NSNull) {
                    missing += missingKeys(inner, schema: resolve(property), at: "\(place).\(key)")
                }
            }
        } else if let array = value as? [Any], let items = schema["items"] {
            for (index, element) in array.enumerated() {
                missing += missingKeys(element, schema: resolve(items), at: "\(place)[\(index)]")
            }
        }
        return missing
    }
}

@Suite("agent API: docs/openapi.yaml")
struct OpenAPITests {
    @Test("the document lists exactly the routes the agent's router holds")
    func theRoutesAreTheDocumentedOnes() async throws {
        let document = try OpenAPIDocument()
        let files = try ScratchDirectory()
        let dataplane = try await TestDataplane.make()
        defer { dataplane.close() }
        let config = AgentConfig(pinPath: dataplane.pinPath, tokenFile: try files.write("token", "t0ken\n"),
                                 servicesFile: files.path + "/services.yaml")
        let controller = try await AgentController(config: config)
        let served = Set(AgentServer.router(controller).routes.map { route in
            let text = "\(route)", space = text.firstIndex(of: " ")!
            let path = text[text.index(after: space)...]
            return "\(text[..<space]) \(path.hasPrefix("/") ? "" : "/")\(path)"
        })
        let documented = Set(document.operations.map(\.id))
        #expect(!served.isEmpty)
        #expect(served == documented, "served, not documented: \(served.subtracting(documented).sorted()); documented, not served: \(documented.subtracting(served).sorted())")
    }

    @Test("a real agent answers every documented operation as documented; a write without the token is a documented 401 and changes nothing")
    func theAgentAnswersAsDocumented() async throws {
        let document = try OpenAPIDocument()
        try await AgentFixture.with { fixture in
            let before = try await fixture.status()
            for operation in document.operations {
                let body = operation.body["requestBody"] != nil ? Fixtures.changed : nil
                if operation.needsToken {
                    let reply = try await fixture.agent.request(operation.method, operation.path, body: body)
                    #expect(reply.status == 401 && operation.statuses.contains(401), "\(operation.id) without the token: \(reply)")
                    if let schema = document.jsonSchema(operation, status: 401) {
                        #expect(document.missingKeys(try reply.json(), schema: schema).isEmpty, "\(operation.id): \(reply)")
                    }
                    continue
                }
                let reply = try await fixture.agent.request(operation.method, operation.path)
                #expect(operation.statuses.contains(reply.status), "\(operation.id) answered \(reply.status), documented \(operation.statuses.sorted())")
                if let schema = document.jsonSchema(operation, status: reply.status) {
                    #expect(reply.contentType == "application/json", "\(operation.id): \(reply)")
                    let value = try JSONSerialization.jsonObject(with: reply.body)
                    let missing = document.missingKeys(value, schema: schema)
                    #expect(missing.isEmpty, "\(operation.id): no \(missing) in \(reply)")
                } else {
                    #expect(reply.contentType?.hasPrefix("text/plain") == true, "\(operation.id): \(reply)")
                }
            }
            #expect(try await fixture.status() == before, "a refused write changed the data plane")
            // With the token, a validate is documented too (and writes nothing).
            let validate = try #require(document.operations.first { $0.id == "POST /v1/services/validate" })
            let reply = try await fixture.agent.request("POST", "/v1/services/validate", body: Fixtures.changed, token: AgentFixture.token)
            let schema = try #require(document.jsonSchema(validate, status: reply.status), "\(reply)")
            #expect(document.missingKeys(try reply.json(), schema: schema).isEmpty, "\(reply)")
            let bad = try await fixture.agent.request("PUT", "/v1/services", body: "services: 7\n", token: AgentFixture.token)
            #expect(bad.status == 400, "\(bad)")
            let errorSchema = try #require(document.jsonSchema(validate, status: 400))
            #expect(document.missingKeys(try bad.json(), schema: errorSchema).isEmpty, "\(bad)")
            #expect(try await fixture.status() == before)
        }
    }

    @Test("a method a path does not serve answers 405 naming the ones it does in Allow; an unknown path 404")
    func undeclaredMethods() async throws {
        let scratch = try ScratchDirectory()
        let headers = scratch.path + "/headers"
        try await AgentFixture.with { fixture in
            for (method, path, allow) in [("DELETE", "/v1/services", "GET, PUT"), ("GET", "/v1/drain", "POST"), ("PUT", "/healthz", "GET")] {
                let reply = try await fixture.agent.curl(method, path, curlOptions: ["-D", headers])
                #expect(reply.status == 405, "\(method) \(path): \(reply)")
                #expect((try reply.json()["error"] as? String)?.contains(allow) == true, "\(reply)")
                let lines = try String(contentsOfFile: headers, encoding: .utf8).lowercased().split(separator: "\r\n")
                #expect(lines.contains("allow: \(allow.lowercased())"), "\(method) \(path): \(lines)")
            }
            let unknown = try await fixture.agent.request("GET", "/v2/anything")
            #expect(unknown.status == 404, "\(unknown)")
        }
    }

    /// schemathesis, installed by `make test` (Makefile: SCHEMATHESIS_VENV).
    static let schemathesis = Lbctl.packageRoot.appendingPathComponent(".build/tools/schemathesis/bin/schemathesis").path
    /// What is checked of every answer. Left out: whether schema-valid documents are accepted
    /// and schema-invalid ones refused, since a service file's validity (YAML bodies, rules
    /// across fields) is more than its JSON schema says; the answers to those are still checked.
    static let checks = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
                         "response_schema_conformance", "ignored_auth", "unsupported_method", "allow_header_conformance"]

    /// The agent's resident memory, from /proc.
    static func residentKiB(_ pid: Int32) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") })
        return try #require(Int(line.split(separator: " ").dropFirst().first ?? ""))
    }

    @Test("schemathesis against a real agent, from docs/openapi.yaml, without the token and with it: no 5xx, answers as documented, a refused write changes nothing, memory bounded")
    func schemathesisFindsNothing() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.schemathesis), "no \(Self.schemathesis): make test installs it")
        let scratch = try ScratchDirectory()
        // Half a minute of a core for schemathesis: while no lab (whose tests measure time) is up.
        try await LabSlots.shared.withPermits(LabSlots.shared.permits) { try await fuzz(scratch) }
    }

    private func fuzz(_ scratch: ScratchDirectory) async throws {
        try await AgentFixture.with { fixture in
            let before = try await fixture.status()
            let memoryBefore = try Self.residentKiB(fixture.agent.pid)
            func run(_ extra: [String]) async throws -> CommandResult {
                try await Command.run("/usr/bin/env", ["-C", scratch.path, Self.schemathesis, "run", OpenAPIDocument.path,
                                                       "--url", fixture.agent.baseURL, "--checks", Self.checks.joined(separator: ","),
                                                       "--max-examples", ProcessInfo.processInfo.environment["SLUICE_FUZZ_EXAMPLES"] ?? "20", "--generation-database", "none", "--no-color"] + extra)
            }
            // Without the token: every write is refused (401), so nothing may change.
            let refused = try await run([])
            #expect(refused.status == 0, "\(refused.stdout)\n\(refused.stderr)")
            #expect(try await fixture.status() == before, "a refused request changed the data plane")
            #expect(!FileManager.default.fileExists(atPath: fixture.servicesPath), "a refused request persisted a set")
            // With it: whatever the documents, never a 5xx and always a documented answer.
            let authorized = try await run(["--header", "Authorization: Bearer \(AgentFixture.token)"])
            #expect(authorized.status == 0, "\(authorized.stdout)\n\(authorized.stderr)")
            let health = try await fixture.agent.request("GET", "/healthz")
            #expect(health.status == 200, "the agent still answers: \(health)")
            let memoryAfter = try Self.residentKiB(fixture.agent.pid)
            #expect(memoryAfter < memoryBefore + 64 * 1024, "resident memory grew from \(memoryBefore) to \(memoryAfter) KiB")
            for result in [refused, authorized] {
                print("schemathesis:", result.stdout.split(separator: "\n").filter { $0.contains("generated") || $0.hasPrefix("Seed") }.joined(separator: "; "))
            }
            print("agent resident memory: \(memoryBefore) KiB before, \(memoryAfter) KiB after")
        }
    }
}
