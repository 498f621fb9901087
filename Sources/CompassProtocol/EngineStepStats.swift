/// An engine's own count of how full it ran, as a continuously batching engine reports it with
/// each result (`stats.engine`, docs/engines.md): every step advances each running sequence by
/// one token, so `sequenceSteps / (steps × capacity)` is the share of its capacity the engine
/// used. The counters are cumulative since the engine started, so the occupancy over any stretch
/// of a run is the difference of two reports, whatever the clock did in between.
public struct EngineStepStats: Codable, Sendable, Equatable {
    /// Sequences the engine runs at once.
    public var capacity: Int
    /// Steps since the engine started.
    public var steps: Int
    /// Running sequences summed over those steps.
    public var sequenceSteps: Int
    /// Mean running sequences per step over this batch's life in the engine, divided by capacity.
    public var occupancy: Double?

    public init(capacity: Int, steps: Int, sequenceSteps: Int, occupancy: Double? = nil) {
        self.capacity = capacity
        self.steps = steps
        self.sequenceSteps = sequenceSteps
        self.occupancy = occupancy
    }

    /// Occupancy between an earlier report and this one (nil when no step ran in between).
    public func occupancy(since earlier: EngineStepStats) -> Double? {
        let steps = self.steps - earlier.steps
        guard steps > 0, capacity > 0 else { return nil }
        return Double(sequenceSteps - earlier.sequenceSteps) / Double(steps * capacity)
    }

    enum CodingKeys: String, CodingKey {
        case capacity, steps, sequenceSteps = "sequence_steps", occupancy
    }
}
