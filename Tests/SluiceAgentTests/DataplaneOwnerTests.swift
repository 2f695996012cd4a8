// The agent's one owner of the pinned data plane: writes run in order on its own thread,
// reads on another, so a read answers while a long apply is still writing.
import Foundation
import SluiceAgent
import SluiceControl
import SluiceCore
import SluiceTestSupport
import Synchronization
import Testing

@Suite
struct DataplaneOwnerTests {
    /// `count` TCP services of three backends each. Small Maglev tables (M = 4093) keep the
    /// applies light on CPU that the lab's timed tests share.
    static func services(_ count: Int) -> String {
        var yaml = "node:\n  source_v4: 10.0.0.1\n  maglev_table_size: 4093\nservices:\n"
        for index in 0..<count {
            yaml += """
                  - name: s\(index)
                    vip: 198.18.\(index / 250).\(index % 250 + 1)
                    port: 80
                    protocol: tcp
                    backends: [{ address: 10.1.\(index / 250).\(index % 250 + 1) }, { address: 10.2.0.1 }, { address: 10.3.0.1 }]

                """
        }
        return yaml
    }

    /// A data plane loaded into a private bpffs, owned as the agent owns it.
    static func withOwner(_ body: (DataplaneOwner) async throws -> Void) async throws {
        let mount = try BPFFSMount()
        defer { mount.close() }
        let pinPath = mount.path + "/lb"
        defer { Dataplane.removePins(at: pinPath) }
        let owner = try await DataplaneOwner.openOrLoad(pinPath: pinPath)
        try await body(owner)
    }

    @Test func aStatusReadAnswersWhileALongApplyIsStillWriting() async throws {
        try await Self.withOwner { owner in
            let file = try ServiceFileParser.parse(Self.services(64), file: "owner-test.yaml")

            let applied = Atomic<Bool>(false)
            let apply = Task {
                let result = try await owner.apply(file)
                applied.store(true, ordering: .sequentiallyConsistent)
                return result
            }
            // Reads while the apply runs: at least one must come back before it is done.
            var readsDuringApply = 0
            var sawPartialSet = false
            while !applied.load(ordering: .sequentiallyConsistent) {
                let status = try await owner.status()
                if !applied.load(ordering: .sequentiallyConsistent) {
                    readsDuringApply += 1
                    if status.services.count < 64 { sawPartialSet = true }
                }
            }
            let result = try await apply.value
            #expect(result.tablesWritten == 64)
            #expect(readsDuringApply > 0, "no read answered while the apply ran: reads wait for writes")
            #expect(sawPartialSet, "every read during the apply saw the whole set: it did not run beside the writes")
            #expect(try await owner.status().services.count == 64)
        }
    }

    @Test func concurrentAppliesEachApplyWhole() async throws {
        try await Self.withOwner { owner in
            // Eight applies started at once: they run one after another, so what the maps hold
            // afterwards is exactly one of the files, never a mixture.
            let files = try (1...8).map { try ServiceFileParser.parse(Self.services($0 * 3), file: "owner-\($0).yaml") }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for file in files { group.addTask { _ = try await owner.apply(file) } }
                try await group.waitForAll()
            }
            let applied = try await owner.appliedState().serviceFile
            #expect(files.contains { Set($0.services.map(\.name)) == Set(applied.services.map(\.name)) }, "\(applied.services.map(\.name))")
        }
    }
}
