/// The broker's pools, from its STATUS document (the few keys the gateway reads).
public struct PoolInfo: Sendable, Equatable, Decodable {
    public var name: String
    public var workers: Int
    public var queuedBatches: Int
    public var runningBatches: Int

    enum CodingKeys: String, CodingKey {
        case name, workers, queuedBatches = "queued_batches", runningBatches = "running_batches"
    }
}
