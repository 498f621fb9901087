import CompassScheduler
import Metrics

/// The broker's metrics, through swift-metrics (the executable chooses the backend: Prometheus).
/// Pool counters follow the scheduler's own counters (refreshed once a second, so nothing is
/// counted twice and the hot path pays nothing); failures and retries by code come from events.
struct BrokerMetrics {
    private var counters: [String: Counter] = [:]
    private var gauges: [String: Gauge] = [:]
    private var timers: [String: Timer] = [:]
    private var last: [String: PoolCounters] = [:]

    /// A metric from `store`, made once per label and dimensions (making one takes the backend's lock).
    static func cached<M>(_ store: inout [String: M], _ label: String, _ dimensions: [(String, String)],
                          _ make: (String, [(String, String)]) -> M) -> M {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        if let m = store[key] { return m }
        let m = make(label, dimensions)
        store[key] = m
        return m
    }

    mutating func counter(_ label: String, _ dimensions: [(String, String)]) -> Counter {
        Self.cached(&counters, label, dimensions) { Counter(label: $0, dimensions: $1) }
    }

    mutating func gauge(_ label: String, _ dimensions: [(String, String)]) -> Gauge {
        Self.cached(&gauges, label, dimensions) { Gauge(label: $0, dimensions: $1) }
    }

    mutating func latency(_ pool: String) -> Timer {
        if let t = timers[pool] { return t }
        let t = Timer(label: "compass_batch_latency", dimensions: [("pool", pool)], preferredDisplayUnit: .seconds)
        timers[pool] = t
        return t
    }

    /// Brings queue gauges and pool counters up to date with a snapshot.
    mutating func refresh(_ snapshot: SchedulerSnapshot, workerGPUs: [(worker: String, gpus: [(index: Int, usedMiB: Int?, totalMiB: Int?, utilization: Int?)])]) {
        for pool in snapshot.pools {
            let p = [("pool", pool.name)]
            gauge("compass_queued_batches", p).record(pool.queuedBatches)
            gauge("compass_queued_requests", p).record(pool.queuedRequests)
            gauge("compass_running_batches", p).record(pool.runningBatches)
            gauge("compass_pool_held_bytes", p).record(pool.heldBytes)
            gauge("compass_workers", p).record(pool.workers)
            let before = last[pool.name] ?? PoolCounters()
            let now = pool.counters
            func add(_ label: String, _ a: Int, _ b: Int) { if b > a { counter(label, p).increment(by: Int64(b - a)) } }
            add("compass_batches_submitted_total", before.submitted, now.submitted)
            add("compass_batches_dispatched_total", before.dispatched, now.dispatched)
            add("compass_batches_completed_total", before.completed, now.completed)
            add("compass_batches_failed_total", before.failed, now.failed)
            add("compass_batches_retried_total", before.retried, now.retried)
            add("compass_requests_completed_total", before.completedRequests, now.completedRequests)
            add("compass_stale_results_dropped_total", before.staleDropped, now.staleDropped)
            add("compass_submits_busy_total", before.rejectedBusy, now.rejectedBusy)
            add("compass_batches_affinity_placed_total", before.affinityPlaced, now.affinityPlaced)
            add("compass_batches_affinity_fallback_total", before.affinityFallback, now.affinityFallback)
            last[pool.name] = now
        }
        for w in workerGPUs {
            for g in w.gpus {
                let d = [("worker", w.worker), ("gpu", "\(g.index)")]
                if let used = g.usedMiB { gauge("compass_gpu_memory_used_bytes", d).record(used << 20) }
                if let total = g.totalMiB { gauge("compass_gpu_memory_total_bytes", d).record(total << 20) }
                if let util = g.utilization { gauge("compass_gpu_utilization_ratio", d).record(Double(util) / 100) }
            }
        }
    }

    mutating func note(_ event: SchedulerEvent) {
        switch event {
        case .completed(_, let pool, _, let latencyMilliseconds):
            latency(pool).recordMilliseconds(latencyMilliseconds)
        case .failed(_, let pool, let code, _):
            counter("compass_batch_failures_total", [("pool", pool), ("code", code.rawValue)]).increment()
        case .requeued(_, _, let code, _):
            counter("compass_batch_retries_total", [("code", code.rawValue)]).increment()
        case .workerLost(_, let pool, _, _):
            counter("compass_workers_lost_total", [("pool", pool)]).increment()
        case .rejected(let code, _):
            counter("compass_submits_rejected_total", [("code", code.rawValue)]).increment()
        case .split(_, _, _, _, let code):
            counter("compass_batch_splits_total", [("code", code.rawValue)]).increment()
        default:
            break
        }
    }

    mutating func refused(domain: String) {
        counter("compass_curve_refusals_total", [("domain", domain)]).increment()
    }
}
