/// A message that breaks the protocol: the code and reason sent back in REJECTED and logged.
public struct ProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public let code: RejectCode
    public let message: String

    public init(_ code: RejectCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }
}
