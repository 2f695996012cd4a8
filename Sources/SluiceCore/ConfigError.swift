// A rejected service file: where, which service, which field, and why, in one
// line a person can act on, e.g.
// `services.yaml:12: service "web" (services[0]): field "port": 70000 is not a port (1-65535)`.

public struct ConfigError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The file as the user named it (or a stand-in such as "request body").
    public var file: String
    /// 1-based line of the offending node, when known.
    public var line: Int?
    /// Name of the service the error is in, when it has one.
    public var service: String?
    /// Position of that service in `services`.
    public var serviceIndex: Int?
    /// Path of the field inside the service (or from the top for `node.…`), e.g. `backends[2].weight`.
    public var field: String?
    public var message: String

    public init(file: String, line: Int? = nil, service: String? = nil, serviceIndex: Int? = nil,
                field: String? = nil, message: String) {
        self.file = file
        self.line = line
        self.service = service
        self.serviceIndex = serviceIndex
        self.field = field
        self.message = message
    }

    public var description: String {
        var text = file
        if let line { text += ":\(line)" }
        text += ": "
        switch (service, serviceIndex) {
        case let (name?, index?) where !name.isEmpty: text += "service \"\(name)\" (services[\(index)]): "
        case let (name?, nil) where !name.isEmpty: text += "service \"\(name)\": "
        case let (_, index?): text += "services[\(index)]: "
        default: break
        }
        if let field { text += "field \"\(field)\": " }
        return text + message
    }
}

extension ConfigError {
    /// How a raw value appears in a message: numbers bare, anything else quoted.
    package static func show(_ raw: String) -> String {
        Int(raw) != nil ? raw : String(reflecting: raw)
    }
}
