/// How long a connection may take, per connection (issue 20: slow and idle peers cost only
/// themselves, and only for a while).
public struct ConnectionLimits: Sendable, Equatable {
    /// A connection with no request in progress is closed after this long. A request's head has to
    /// arrive whole within it too (a head sent a byte at a time does not keep the connection).
    public var idleMilliseconds: Int64 = 30_000
    /// A request's body must have arrived within this long after its head...
    public var bodyGraceMilliseconds: Int64 = 30_000
    /// ...plus one second for every this many bytes that did arrive: a body that keeps coming at
    /// this rate or faster is never cut, one that trickles is closed.
    public var minBodyBytesPerSecond: Int = 64 << 10

    public init() {}
}
