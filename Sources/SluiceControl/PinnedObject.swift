// One BPF object pinned under a pin path (the balancer, the decapsulator): loading it,
// pinning it, reopening its pins and removing them, all from one list of its maps.
import CLibbpf
import Glibc
import SluiceBPF

/// The maps of one BPF object: the one Swift list of them. The C list is the object's
/// `SEC(".maps")` definitions (bpf/maps.h, bpf/decap_maps.h); a test checks that the two
/// agree. Loading, opening, checking the pinned layouts and removing pins all follow from
/// it, so adding a map is one edit in C and one case here.
package protocol MapList: RawRepresentable<String>, CaseIterable, Hashable, Sendable where AllCases == [Self] {
    static var object: ObjectKind { get }
}

/// What tells one pinned object from another.
package struct ObjectKind: Sendable {
    /// For messages: "balancer", "decapsulator".
    var what: String
    /// The bpf_object name (the kernel shows it in map and program names).
    var objectName: String
    /// The one program, pinned under its own name.
    var program: String
    /// What a user runs to load it, for the message when nothing is pinned.
    var loadCommand: String
    var elf: @Sendable () -> [UInt8]
}

/// The program and the maps of one object under one pin path: descriptors only, which
/// any thread may use (the kernel orders map operations).
package final class PinnedObject<Map: MapList>: Sendable {
    package let pinPath: String
    package let program: BPFProgram
    private let maps: [Map: BPFMap]

    package subscript(_ map: Map) -> BPFMap { maps[map]! }

    private init(pinPath: String, program: BPFProgram, maps: [Map: BPFMap]) {
        self.pinPath = pinPath
        self.program = program
        self.maps = maps
    }

    static func programPin(_ pinPath: String) -> String { "\(pinPath)/\(Map.object.program)" }

    /// True when the program is pinned at `pinPath`.
    static func isPinned(at pinPath: String) -> Bool { access(programPin(pinPath), F_OK) == 0 }

    /// Opens what is pinned at `pinPath`, refusing pins whose maps differ from this
    /// binary's object (an older lbctl loaded them).
    static func open(at pinPath: String) throws(ControlError) -> PinnedObject {
        let kind = Map.object
        guard isPinned(at: pinPath) else {
            throw .runtime("no Sluice \(kind.what) is pinned at \(pinPath) (run '\(kind.loadCommand)' first)")
        }
        let older = "the \(kind.what) pinned at \(pinPath) was loaded by an older lbctl"
        let remedy = "run 'lbctl detach IFACE' and 'lbctl attach IFACE' to load this version"
        let pinned: PinnedObject
        do {
            let program = try BPFProgram.openPinned(programPin(pinPath))
            var maps: [Map: BPFMap] = [:]
            for map in Map.allCases { maps[map] = try BPFMap.openPinned("\(pinPath)/\(map.rawValue)") }
            pinned = PinnedObject(pinPath: pinPath, program: program, maps: maps)
        } catch where error.isNotFound {
            // The program is pinned (checked above) but one of today's maps is not.
            throw .runtime("\(older) (\(error.context) is missing): \(remedy)")
        } catch {
            throw .bpf(error, while: "opening the \(kind.what) pinned at \(pinPath)")
        }
        for declared in try declarations() {
            guard let map = Map(rawValue: declared.name) else { continue }
            let info = pinned[map].info
            guard info.type == declared.type, info.keySize == declared.keySize, info.valueSize == declared.valueSize else {
                throw .runtime("\(older) (its map \(declared.name) has another layout): \(remedy)")
            }
        }
        return pinned
    }

    /// Opens the pinned object, or loads the embedded one and pins it (`configure` runs
    /// between opening the ELF and loading it, e.g. to size a map). A failed load leaves
    /// no pins behind.
    static func openOrLoad(at pinPath: String,
                           configure: (BPFObject) throws(BPFError) -> Void = { _ in }) throws(ControlError) -> PinnedObject {
        if isPinned(at: pinPath) { return try open(at: pinPath) }
        let kind = Map.object
        try PinDirectory.prepare(pinPath)
        LibbpfLog.warningsToStderr()
        do {
            // The object pins its maps itself (LIBBPF_PIN_BY_NAME under pinRoot); the
            // program is pinned last, so a pinned program means a complete object.
            let object = try BPFObject(elf: kind.elf(), name: kind.objectName, pinRoot: pinPath)
            try configure(object)
            try object.load()
            try object.program(named: kind.program).pin(at: programPin(pinPath))
        } catch {
            removePins(at: pinPath)
            throw .bpf(error, while: "loading the \(kind.what) into \(pinPath)")
        }
        return try open(at: pinPath)
    }

    /// Removes the object's pins (and no other's), then the directory if it is empty.
    static func removePins(at pinPath: String) {
        PinDirectory.unpin([Map.object.program] + Map.allCases.map(\.rawValue), at: pinPath)
    }

    /// The maps as this binary's object declares them (the ELF is opened, not loaded).
    package static func declarations() throws(ControlError) -> [BPFObject.MapDeclaration] {
        do {
            return try BPFObject(elf: Map.object.elf(), name: Map.object.objectName, pinRoot: nil).mapDeclarations
        } catch {
            throw .bpf(error, while: "opening the embedded \(Map.object.what) object")
        }
    }

    /// The kernel's id of the pinned program.
    func programID() throws(ControlError) -> UInt32 { try XDPHook.programID(program) }
}

/// What `detach` did.
public struct DetachOutcome: Sendable {
    public var wasAttached: Bool
    public var pinsRemoved: Bool
    /// Interfaces of this namespace still running the pinned program.
    public var stillAttached: [String]
}

/// What `attach` did.
public struct AttachOutcome: Sendable {
    public var interface: NetworkInterface
    public var mode: XDPMode
    public var alreadyAttached: Bool
}

/// Attaching a pinned object's program to an interface and detaching it, with the
/// checks every lbctl attach and detach makes.
extension PinnedObject {
    /// What an attach found before it changes anything: what is on the interface and
    /// whether our program is already pinned. Another program there is an error.
    struct AttachCheck {
        var interface: NetworkInterface
        var existing: XDP.Attachment?
        var pinnedID: UInt32?
    }

    static func checkAttach(_ name: String, pinPath: String) throws(ControlError) -> AttachCheck {
        let interface = try NetworkInterface.named(name)
        let existing = try XDPHook.query(interface)
        let pinnedID = isPinned(at: pinPath) ? try XDPHook.programID(try BPFProgram.openPinnedOrThrow(programPin(pinPath))) : nil
        try XDPHook.refuseOther(existing, ours: pinnedID, on: interface)
        return AttachCheck(interface: interface, existing: existing, pinnedID: pinnedID)
    }

    /// Runs `configure` on `pinned` and attaches its program where nothing is attached
    /// yet. An object loaded just now for this attach is not left pinned on failure.
    static func finishAttach(_ check: AttachCheck, _ pinned: PinnedObject, mode: XDPMode,
                             configure: (PinnedObject) throws(ControlError) -> Void) throws(ControlError) -> AttachOutcome {
        do {
            try configure(pinned)
            if let existing = check.existing {
                return AttachOutcome(interface: check.interface, mode: existing.mode, alreadyAttached: true)
            }
            try XDPHook.attach(pinned.program, to: check.interface, mode: mode)
        } catch {
            if check.pinnedID == nil { removePins(at: pinned.pinPath) }
            throw error
        }
        return AttachOutcome(interface: check.interface, mode: mode, alreadyAttached: false)
    }

    /// Detaches the pinned program from `interface` and, when no interface of this
    /// namespace still runs it, removes its pins. Only the program pin is read, so an
    /// object pinned by an older lbctl (other maps) can still be detached.
    static func detach(interface name: String, pinPath: String) throws(ControlError) -> DetachOutcome {
        let interface = try NetworkInterface.named(name)
        let ours = isPinned(at: pinPath) ? try XDPHook.programID(try BPFProgram.openPinnedOrThrow(programPin(pinPath))) : nil
        let wasAttached = try XDPHook.detach(interface, ours: ours,
                                             what: "the Sluice \(Map.object.what) pinned at \(pinPath)")
        let still = ours.map { id in XDPHook.attachedInterfaces(programID: id).map(\.name) } ?? []
        let remove = ours != nil && still.isEmpty
        if remove { removePins(at: pinPath) }
        return DetachOutcome(wasAttached: wasAttached, pinsRemoved: remove, stillAttached: still)
    }
}

extension BPFProgram {
    /// A pinned program, with a libbpf failure turned into what lbctl reports.
    static func openPinnedOrThrow(_ path: String) throws(ControlError) -> BPFProgram {
        do { return try BPFProgram.openPinned(path) } catch {
            throw .bpf(error, while: "opening the program pinned at \(path)")
        }
    }
}
