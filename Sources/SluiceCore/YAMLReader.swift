// Shape checks over a composed YAML tree (Yams.Node): mappings with only known
// keys, required keys, scalars and lists. Each failure becomes a ConfigError
// carrying the node's line, and the line of every field read is remembered so
// the semantic checks (ServiceFileValidator) can point at it too. The service
// file and the agent's configuration are both read with it, so their errors
// look alike: `FILE:LINE: field "x.y": message`.

import Glibc
import Yams

package struct YAMLReader {
    package let file: String
    /// Line of each key read, keyed by its full path: `node.source_v4`,
    /// `services[0]`, `services[0].backends[1].weight`.
    private(set) var lines: [String: Int] = [:]
    /// The service being read, so errors can name it.
    var serviceName: String?
    var serviceIndex: Int?

    package init(file: String) {
        self.file = file
    }

    /// A mapping's values by key, with the path that names its fields in errors.
    package struct Fields {
        package let node: Node
        /// Path of the mapping relative to the current service (or the top): nil, `node`, `backends[1]`.
        package let path: String?
        package let values: [String: Node]

        package func field(_ key: String) -> String {
            path.map { "\($0).\(key)" } ?? key
        }
    }

    /// Composes `text` and reads its top level, which must be a mapping with only
    /// `allowed` keys: the start of reading a whole file.
    package static func document(_ text: String, file: String, allowed: [String]) throws(ConfigError) -> (YAMLReader, Fields) {
        let expected = "a mapping with keys \(allowed.joined(separator: ", "))"
        let root = try compose(text, file: file, expected: expected)
        var reader = YAMLReader(file: file)
        guard case .mapping = root else {
            throw reader.error(at: root, field: nil, "the top level must be \(expected), found \(kind(of: root))")
        }
        let top = try reader.mapping(root, path: nil, allowed: allowed)
        return (reader, top)
    }

    /// An error on `node`'s line, or (with no node) on the line recorded for `field`.
    package func error(at node: Node?, field: String?, _ message: String) -> ConfigError {
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

    /// `node` as a mapping whose keys are all in `allowed`: the one check for unknown keys.
    package mutating func mapping(_ node: Node, path: String?, allowed: [String]) throws(ConfigError) -> Fields {
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
    package func optional(_ fields: Fields, _ key: String) -> Node? {
        guard let value = fields.values[key], !Self.isNull(value) else { return nil }
        return value
    }

    /// The value of a required key; `because` says what it is needed for.
    package func required(_ fields: Fields, _ key: String, because: String? = nil) throws(ConfigError) -> Node {
        guard let value = fields.values[key] else {
            throw error(at: fields.node, field: fields.field(key), "required key is missing" + (because.map { ": \($0)" } ?? ""))
        }
        guard !Self.isNull(value) else {
            throw error(at: value, field: fields.field(key), "required key has no value")
        }
        return value
    }

    /// The text of a scalar, exactly as written (no YAML 1.1 type coercion).
    package func scalar(_ node: Node, field: String) throws(ConfigError) -> String {
        guard case .scalar(let scalar) = node else {
            throw error(at: node, field: field, "expected a single value, found \(Self.kind(of: node))")
        }
        return scalar.string
    }

    /// A scalar YAML reads as a string (not a number, boolean, null or date), not empty:
    /// a path or an address.
    package func string(_ node: Node, field: String) throws(ConfigError) -> String {
        let text = try scalar(node, field: field)
        guard node.tag.rawValue == Tag.Name.str.rawValue, !text.isEmpty else {
            throw error(at: node, field: field, "must be a non-empty string, found \(Self.kind(of: node))")
        }
        return text
    }

    /// A duration (`500ms`, `2s`, `1m`, `1h`) in milliseconds within `range`; `examples`
    /// are shown when it is not.
    package func duration(_ node: Node, field: String, range: ClosedRange<Int>, examples: String) throws(ConfigError) -> Int {
        let raw = try scalar(node, field: field)
        guard let value = HealthCheck.parseDuration(raw), range.contains(value) else {
            throw error(at: node, field: field, "\(String(reflecting: raw)) is not a duration from \(HealthCheck.formatDuration(range.lowerBound)) to \(HealthCheck.formatDuration(range.upperBound)) (e.g. \(examples))")
        }
        return value
    }

    package func sequence(_ node: Node, field: String) throws(ConfigError) -> [Node] {
        guard case .sequence(let sequence) = node else {
            throw error(at: node, field: field, "expected a list, found \(Self.kind(of: node))")
        }
        return Array(sequence)
    }

    static func isNull(_ node: Node) -> Bool {
        guard case .scalar(let scalar) = node, scalar.style == .plain else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    package static func kind(of node: Node) -> String {
        switch node {
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .scalar(let scalar): "the value \(ConfigError.show(scalar.string))"
        case .alias: "an alias"
        }
    }
}

extension YAMLReader {
    /// Yams' composer, its errors turned into ConfigErrors with the line.
    private static func compose(_ text: String, file: String, expected: String) throws(ConfigError) -> Node {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw syntaxError(error, text: text, file: file)
        } catch {
            throw ConfigError(file: file, message: "invalid YAML: \(error)")
        }
        guard let root else {
            throw ConfigError(file: file, line: 1, message: "the file is empty; expected \(expected)")
        }
        return root
    }

    private static func syntaxError(_ error: YamlError, text: String, file: String) -> ConfigError {
        func context(_ context: YamlError.Context?) -> String {
            context.map { " (\($0.text) at line \($0.mark.line))" } ?? ""
        }
        switch error {
        case let .scanner(ctx, problem, mark, _), let .parser(ctx, problem, mark, _), let .composer(ctx, problem, mark, _):
            return ConfigError(file: file, line: mark.line, message: "invalid YAML: \(problem)\(context(ctx))")
        case let .reader(problem, offset, _, _):
            let line = offset.map { text.prefix($0).reduce(1) { $1 == "\n" ? $0 + 1 : $0 } }
            return ConfigError(file: file, line: line, message: "invalid YAML: \(problem)")
        case let .duplicatedKeysInMapping(duplicates, ctx):
            let keys = duplicates.map { String(reflecting: $0) }.joined(separator: ", ")
            return ConfigError(file: file, line: ctx.mark.line, message: "key \(keys) appears more than once in one mapping")
        default:
            return ConfigError(file: file, message: "invalid YAML: \(error)")
        }
    }

    /// The whole file as UTF-8 text, with errno's reason on failure.
    package static func readFile(_ path: String) throws(ConfigError) -> String {
        guard let stream = fopen(path, "rb") else {
            throw ConfigError(file: path, message: "cannot open: \(String(cString: strerror(errno)))")
        }
        defer { fclose(stream) }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, stream)
            data += chunk[0..<count]
            if count < chunk.count { break }
        }
        if ferror(stream) != 0 {
            throw ConfigError(file: path, message: "cannot read: \(String(cString: strerror(errno)))")
        }
        guard let text = String(validating: data, as: UTF8.self) else {
            throw ConfigError(file: path, message: "is not UTF-8 text")
        }
        return text
    }
}
