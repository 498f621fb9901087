import Foundation
import ZMQ

/// The broker's authenticator (ZeroMQ's ZAP, RFC 27): libzmq asks it about every CURVE handshake
/// on the broker's sockets, and it answers from the allowlist of the socket's domain. It runs in
/// the broker's poll loop; a socket that has no allowlist admits any key (encryption only).
public final class ZAPHandler {
    /// The ZAP domains of the broker's two sockets: a producer's key cannot register a worker.
    public static let producerDomain = "compass-producers"
    public static let workerDomain = "compass-workers"

    public let socket: ZMQSocket
    public private(set) var producers: Allowlist?
    public private(set) var workers: Allowlist?

    /// One answered handshake, for logs and metrics.
    public struct Decision: Sendable, Equatable {
        public var domain: String
        public var address: String
        public var publicKey: String
        public var admitted: Bool
        public var reason: String
    }

    public init(context: ZMQContext, producers: Allowlist?, workers: Allowlist?) throws {
        socket = try context.socket(.rep)
        try socket.set(.linger(milliseconds: 0))
        try socket.bind("inproc://zeromq.zap.01")
        self.producers = producers
        self.workers = workers
    }

    /// Answers every waiting request; returns the decisions made.
    public func answer() throws -> [Decision] {
        var decisions: [Decision] = []
        while let frames = try socket.receive(dontWait: true) {
            let f = frames.map(\.bytes)
            guard f.count >= 6 else {
                // Not a ZAP request: answer in the protocol's shape so the REP socket can go on.
                try socket.send(["1.0", "", "500", "malformed ZAP request", "", ""].map { Frame(string: $0) })
                continue
            }
            let text = { (i: Int) in String(decoding: f[i], as: UTF8.self) }
            let requestID = frames[1]
            let domain = text(2), address = text(3), mechanism = text(5)
            var decision = Decision(domain: domain, address: address, publicKey: "", admitted: false, reason: "")
            if mechanism != "CURVE" {
                decision.reason = "mechanism \(mechanism) is not allowed (CURVE is required)"
            } else if f.count < 7 || f[6].count != 32 {
                decision.reason = "no CURVE client key"
            } else {
                decision.publicKey = CurveKey.encode(f[6]) ?? "?"
                switch domain {
                case ZAPHandler.producerDomain: decide(&decision, producers, "producer")
                case ZAPHandler.workerDomain: decide(&decision, workers, "worker")
                default: decision.reason = "unknown ZAP domain '\(domain)'"
                }
            }
            try socket.send([Frame(string: "1.0"), requestID, Frame(string: decision.admitted ? "200" : "400"),
                             Frame(string: decision.admitted ? "OK" : decision.reason),
                             Frame(string: decision.admitted ? decision.publicKey : ""), Frame(bytes: [UInt8]())])
            decisions.append(decision)
        }
        return decisions
    }

    func decide(_ decision: inout Decision, _ allowlist: Allowlist?, _ role: String) {
        guard let allowlist else {
            decision.admitted = true
            decision.reason = "no \(role) allowlist: any key is admitted"
            return
        }
        decision.admitted = allowlist.admits(decision.publicKey)
        decision.reason = decision.admitted
            ? "in the \(role) allowlist (\(allowlist.sources[decision.publicKey] ?? "?"))"
            : "key \(decision.publicKey) is not among the \(role) allowlist's keys: \(allowlist.summary)"
    }

    /// Reads the allowlists again (SIGHUP, or a file changed). Returns a line per list for the log;
    /// a list that cannot be read keeps its previous keys.
    @discardableResult
    public func reload(onlyIfChanged: Bool = false) -> [String] {
        var notes: [String] = []
        func refresh(_ list: inout Allowlist?, _ role: String) {
            guard var current = list, !onlyIfChanged || current.changed else { return }
            do {
                try current.reload()
                notes.append("\(role) allowlist \(current.summary)")
            } catch {
                notes.append("\(role) allowlist not reloaded, keeping \(current.keys.count) keys: \(error)")
            }
            list = current
        }
        refresh(&producers, "producer")
        refresh(&workers, "worker")
        return notes
    }
}
