struct StatusDocument: Decodable {
    struct Scheduler: Decodable { var pools: [PoolInfo] }
    /// A worker's READY, of which the gateway reads its pool and its capacity in sequences.
    struct Worker: Decodable {
        struct Capabilities: Decodable { var pool: String; var capacity: Int? }
        var capabilities: Capabilities?
    }
    var brokerID: String?
    var scheduler: Scheduler
    var workers: [Worker]?
    enum CodingKeys: String, CodingKey { case brokerID = "broker_id", scheduler, workers }

    /// Each pool's summed worker capacity, for the pools where every worker reports one.
    var capacities: [String: Int] {
        var sums: [String: Int] = [:]
        var unknown: Set<String> = []
        for case let caps? in (workers ?? []).map(\.capabilities) {
            if let c = caps.capacity, c > 0 { sums[caps.pool, default: 0] += c } else { unknown.insert(caps.pool) }
        }
        for pool in unknown { sums[pool] = nil }
        return sums
    }
}
