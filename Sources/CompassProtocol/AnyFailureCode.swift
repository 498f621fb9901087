/// The code of a FAILED as the broker carries it: one of the protocol's `FailureCode`s (the table
/// `spec/protocol.json` lists), or a code this build does not know (a newer worker's), forwarded
/// to the producer as the worker sent it. Text only on the wire and in the journal: `rawValue`.
public struct AnyFailureCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }

    public init(_ code: FailureCode) { rawValue = code.rawValue }

    /// The protocol's code, or nil for one this build does not know.
    public var known: FailureCode? { FailureCode(rawValue: rawValue) }

    /// The wire text, so that messages and log lines read as before.
    public var description: String { rawValue }
}
