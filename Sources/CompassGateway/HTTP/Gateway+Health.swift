import CompassProtocol
import Hummingbird

/// GET /health: the broker's reachability and the batcher's counts.
extension Gateway {
    func health() -> Response {
        let broker = pools.broker
        let s = batcher.stats
        let body: JSON = .object([
            ("status", .string(broker.reachable ? "ok" : "broker_unreachable")),
            ("broker", .object([("endpoint", .string(options.broker)), ("reachable", .bool(broker.reachable)), ("broker_id", .optional(broker.id)),
                                ("status_age_ms", broker.ageMilliseconds.map { .int(Int($0)) } ?? .null)])),
            ("batcher", .object([
                ("max_batch", .int(options.maxBatch)), ("max_wait_ms", .double(options.maxWaitMilliseconds)),
                ("eager_batches", .int(options.eagerBatches)),
                ("requests", .int(s.requests)), ("batches", .int(s.batches)), ("largest_batch", .int(s.largestBatch)),
                // Batches by why they went: spare (the pool had room: at once), full, window, freed.
                ("flushes", .object(BatchWindow.Reason.allCases.map { ($0.rawValue, .int(s.flushes[$0] ?? 0)) })),
                ("mean_batch_size", .double((s.meanBatchSize * 100).rounded() / 100)),
                // How long requests waited to be flushed: the latency that batching added.
                ("wait_ms_mean", .double((s.meanWaitMilliseconds * 1000).rounded() / 1000)),
                ("wait_ms_max", .double((s.maxWaitMilliseconds * 1000).rounded() / 1000)),
                ("wait_ms_total", .double((Double(s.totalWaitNanoseconds) / 1000).rounded() / 1000)),
            ])),
        ])
        return Gateway.json(body, status: broker.reachable ? .ok : .serviceUnavailable)
    }
}
