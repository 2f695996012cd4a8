// Shape checks over a composed YAML tree (Yams.Node): mappings with only known
// keys, required keys, scalars and lists. Each failure becomes a ConfigError
// carrying the node's line, and the line of every field read is remembered so
// the semantic checks (ServiceFileValidator) can point at it too.

import Yams

struct YAMLReader {
    let file: String
    /// Line of each key read, keyed by its full path: `node.source_v4`,
    /// `services[0]`, `services[0].backends[1].weight`.
    private(set) var lines: [String: Int] = [:]
    /// The service being read, so errors can name it.
    var serviceName: String?
    var serviceIndex: Int?

    init(file: String) {
        self.file = file
    }

    /// A mapping's values by key, with the path that names its fields in errors.
    struct Fields {
        let node: Node
        /// Path of the mapping relative to the current service (or the top): nil, `node`, `backends[1]`.
        let path: String?
        let values: [String: Node]

        func field(_ key: String) -> String {
            path.map { "\($0).\(key)" } ?? key
        }
    }

    /// An error on `node`'s line, or (with no node) on the line recorded for `field`.
    func error(at node: Node?, field: String?, _ message: String) -> ConfigError {
        let line = node?.mark?.line ?? field.flatMap { lines[lineKey($0)] }
        return ConfigError(file: file, line: line, service: serviceName, serviceIndex: serviceIndex,
                           field: field, message: message)
    }

    /// The key under which `field` of the current service is recorded in `lines`.
    func lineKey(_ field: String) -> String {
        serviceIndex.map { "services[\($0)].\(field)" } ?? field
    }

    mutating func record(_ node: Node, as key: String) {
        if let line = node.mark?.line { lines[key] = line }
    }

    /// `node` as a mapping whose keys are all in `allowed`.
    mutating func mapping(_ node: Node, path: String?, allowed: [String]) throws(ConfigError) -> Fields {
        guard case .mapping(let mapping) = node else {
            throw error(at: node, field: path, "expected a mapping (key: value), found \(Self.kind(of: node))")
        }
        var values: [String: Node] = [:]
        var keyLines: [String: Int] = [:]
        for (keyNode, value) in mapping {
            guard case .scalar(let key) = keyNode, allowed.contains(key.string) else {
                let key = keyNode.scalar.map { String(reflecting: $0.string) } ?? Self.kind(of: keyNode)
                throw error(at: keyNode, field: path,
                            "unknown key \(key) (allowed keys: \(allowed.joined(separator: ", ")))")
            }
            values[key.string] = value
            keyLines[key.string] = keyNode.mark?.line
        }
        let fields = Fields(node: node, path: path, values: values)
        // The key's line, not the value's: for a block list or mapping the value
        // starts on the next line, and "field backends: …" should point at `backends:`.
        for (key, line) in keyLines { lines[lineKey(fields.field(key))] = line }
        return fields
    }

    /// The value of an optional key; an explicit null counts as absent.
    func optional(_ fields: Fields, _ key: String) -> Node? {
        guard let value = fields.values[key], !Self.isNull(value) else { return nil }
        return value
    }

    func required(_ fields: Fields, _ key: String) throws(ConfigError) -> Node {
        guard let value = fields.values[key] else {
            throw error(at: fields.node, field: fields.field(key), "required key is missing")
        }
        guard !Self.isNull(value) else {
            throw error(at: value, field: fields.field(key), "required key has no value")
        }
        return value
    }

    /// The text of a scalar, exactly as written (no YAML 1.1 type coercion).
    func scalar(_ node: Node, field: String) throws(ConfigError) -> String {
        guard case .scalar(let scalar) = node else {
            throw error(at: node, field: field, "expected a single value, found \(Self.kind(of: node))")
        }
        return scalar.string
    }

    func sequence(_ node: Node, field: String) throws(ConfigError) -> [Node] {
        guard case .sequence(let sequence) = node else {
            throw error(at: node, field: field, "expected a list, found \(Self.kind(of: node))")
        }
        return Array(sequence)
    }

    static func isNull(_ node: Node) -> Bool {
        guard case .scalar(let scalar) = node, scalar.style == .plain else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    static func kind(of node: Node) -> String {
        switch node {
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .scalar(let scalar): "the value \(ConfigError.show(scalar.string))"
        case .alias: "an alias"
        }
    }
}
