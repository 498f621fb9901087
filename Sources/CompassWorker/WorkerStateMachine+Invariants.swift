import CompassEngines
import CompassProtocol

extension WorkerStateMachine {
    /// Checks the invariants (see the type's documentation); returns a description of each
    /// violation, empty when sound. For tests: cheap enough to call after every step. Meant for
    /// the moment between events, after the actions of the last one were collected.
    public func checkInvariants() -> [String] {
        var problems: [String] = []
        let heldSum = held.reduce(0) { $0 + Self.requests($1) }
        if heldSum != heldRequests { problems.append("heldRequests \(heldRequests) != \(heldSum)") }
        let runningSum = running.reduce(0) { $0 + $1.remaining }
        if runningSum != inEngineRequests { problems.append("inEngineRequests \(inEngineRequests) != \(runningSum)") }
        for b in running where b.done < 0 || b.done > b.requests { problems.append("\(b.batchID): done \(b.done) of \(b.requests)") }
        var keys = Set<String>()
        for key in held.map({ "\($0.batchID)#\($0.attempt)" }) + running.map({ "\($0.batchID)#\($0.attempt)" }) where !keys.insert(key).inserted {
            problems.append("\(key) is held or running twice")
        }
        if !connected && !held.isEmpty { problems.append("\(held.count) batches held without a connection") }
        if !connected && (registered || outstanding != 0) { problems.append("no connection but registered \(registered), outstanding \(outstanding)") }
        if drainingSince != nil && !held.isEmpty { problems.append("\(held.count) batches held while draining") }
        if engine != .ready && !running.isEmpty { problems.append("\(running.count) batches running in an engine that is \(engine)") }
        if outstanding < 0 || outstanding > WireProtocol.maxCredit { problems.append("outstanding credit \(outstanding)") }
        if engine == .ready, drainingSince == nil, !held.isEmpty, hasRoom() {
            problems.append("\(held.count) batches held while the engine has room (\(inEngineRequests) requests, \(running.count) batches inside)")
        }
        if capacity.sequences == nil, running.count > capacity.maxBatches {
            problems.append("\(running.count) batches inside an engine that takes \(capacity.maxBatches)")
        }
        // Admission stops once the engine is at capacity plus its queue: what is inside can exceed
        // that by the last batch admitted at most.
        if let sequences = capacity.sequences, let last = running.last, inEngineRequests >= sequences + engineQueue + last.requests {
            problems.append("\(inEngineRequests) requests inside an engine of \(sequences) (+\(engineQueue)); last batch \(last.requests)")
        }
        if registered, let mode = creditMode, wantedCredit(mode) > 0 {
            problems.append("registered and still wanting \(wantedCredit(mode)) credit")
        }
        if creditMode != nil && answeredSinceReady != 0 { problems.append("answers counted as pending after WELCOME") }
        return problems
    }
}
