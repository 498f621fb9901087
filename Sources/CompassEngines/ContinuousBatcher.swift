import CompassProtocol
import DequeModule

/// Continuous batching as the synthetic engine does it, as a pure value (no thread, no clock), so
/// its counting is unit-tested: up to `capacity` sequences run at once; each step advances every
/// running sequence by one token; a sequence that needs no more tokens leaves at the end of the
/// step and one waiting takes its slot at the start of the next. Batches only group sequences for
/// answering: a batch is answered when its last sequence finishes, and sequences of any number of
/// batches run side by side. This is what vLLM's scheduler does with its running and waiting queues.
public struct ContinuousBatcher {
    public struct Key: Hashable, Sendable {
        public var batchID: String
        public var attempt: UInt32
        public init(_ batchID: String, _ attempt: UInt32) {
            self.batchID = batchID
            self.attempt = attempt
        }
    }

    public enum Event: Sendable {
        /// Requests of the batch done so far (more than before this step).
        case progress(Key, done: Int, total: Int)
        /// Every request of the batch is done; `stats` is the engine's count at that moment, with the
        /// batch's own occupancy (mean running sequences per step over its life, over capacity).
        case finished(Key, results: [InferenceResult], stats: EngineStepStats, startedAt: UInt64)
    }

    struct Sequence {
        let key: Key
        var remaining: Int
        let promptTokens: Int
    }

    struct Batch {
        var results: [InferenceResult]
        var done: Int
        let startedAt: UInt64
        let stepsAtStart: Int
        let sequenceStepsAtStart: Int
    }

    public let capacity: Int
    var running: [Sequence] = []
    var waiting: Deque<Sequence> = []
    var batches: [Key: Batch] = [:]
    /// Steps run since the start, and running sequences summed over them.
    public private(set) var steps = 0
    public private(set) var sequenceSteps = 0

    public init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    /// Sequences in a slot now.
    public var runningCount: Int { running.count }
    /// Sequences waiting for a slot.
    public var waitingCount: Int { waiting.count }
    /// Whether a step would advance anything.
    public var hasWork: Bool { !running.isEmpty || !waiting.isEmpty }
    /// Batches not answered yet.
    public var batchCount: Int { batches.count }

    public var stats: EngineStepStats { EngineStepStats(capacity: capacity, steps: steps, sequenceSteps: sequenceSteps) }

    /// Adds a batch: `results` in request order, `tokens[i]` the steps request `i` runs for (nil:
    /// answered already, e.g. a request that failed alone). A batch with nothing to run finishes at
    /// once: its event is returned. `startedAt` is handed back with the batch's finish.
    public mutating func add(_ key: Key, results: [InferenceResult], tokens: [Int?], startedAt: UInt64) -> Event? {
        var pending = 0
        for (i, steps) in tokens.enumerated() {
            guard let steps else { continue }
            waiting.append(Sequence(key: key, remaining: max(1, steps), promptTokens: results[i].promptTokens))
            pending += 1
        }
        let batch = Batch(results: results, done: results.count - pending, startedAt: startedAt, stepsAtStart: steps,
                          sequenceStepsAtStart: sequenceSteps)
        if pending == 0 { return .finished(key, results: results, stats: stats, startedAt: startedAt) }
        batches[key] = batch
        return nil
    }

    /// Drops a batch and its sequences; false if it is not here (answered already, or unknown).
    public mutating func cancel(_ key: Key) -> Bool {
        guard batches.removeValue(forKey: key) != nil else { return false }
        running.removeAll { $0.key == key }
        waiting.removeAll { $0.key == key }
        return true
    }

    /// Starts a step: free slots are taken from the waiting queue, oldest first. Returns how many
    /// sequences run in this step and the prompt tokens of those that joined it (their prefill).
    public mutating func beginStep() -> (running: Int, joinedPromptTokens: Int) {
        var joined = 0
        while running.count < capacity, let next = waiting.popFirst() {
            running.append(next)
            joined += next.promptTokens
        }
        return (running.count, joined)
    }

    /// Ends the step begun last: every running sequence has one more token; those that need no
    /// more leave their slot. Returns progress of the batches that moved and the batches finished.
    public mutating func endStep() -> [Event] {
        guard !running.isEmpty else { return [] }
        steps += 1
        sequenceSteps += running.count
        var moved: [Key] = []
        var still: [Sequence] = []
        still.reserveCapacity(running.count)
        for var sequence in running {
            sequence.remaining -= 1
            if sequence.remaining > 0 {
                still.append(sequence)
            } else {
                batches[sequence.key]!.done += 1
                if !moved.contains(sequence.key) { moved.append(sequence.key) }
            }
        }
        running = still
        var events: [Event] = []
        for key in moved {
            let batch = batches[key]!
            if batch.done < batch.results.count {
                events.append(.progress(key, done: batch.done, total: batch.results.count))
                continue
            }
            batches[key] = nil
            let ran = steps - batch.stepsAtStart
            var stats = self.stats
            stats.occupancy = Double(sequenceSteps - batch.sequenceStepsAtStart) / Double(ran * capacity)
            events.append(.finished(key, results: batch.results, stats: stats, startedAt: batch.startedAt))
        }
        return events
    }
}
