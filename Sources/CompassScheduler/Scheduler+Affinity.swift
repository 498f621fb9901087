import CompassProtocol

/// Placement by affinity key: batches whose requests share a long prefix (a few-shot preamble, one
/// scoring context) carry the same key (`BatchMeta.affinity`, set by the producer, since the broker
/// never reads payloads), and go to the same worker where the pool allows, so that worker's engine
/// computes the shared prefix once and reuses it (vLLM's prefix cache lives in one engine; the hf
/// engine shares a prefix among the requests it runs together).
///
/// The choice is rendezvous (highest-random-weight) hashing: every live worker of the pool gets a
/// weight from the key and the worker's identity, and the batch goes to the heaviest one that can
/// take it now. A key's ranking of the workers is stable: when a worker joins, only the keys it
/// now tops move to it; when one leaves, only its keys move, each to its own second choice. The
/// identity is the worker process (READY's host and pid), so a worker that reconnects (a broker
/// restart) keeps its keys and its warm cache.
///
/// It never costs exactly-once or fairness, and no batch waits for it:
/// - which batch goes next is decided as before (priority, then round-robin between sessions);
///   affinity only picks the worker for it;
/// - only a worker with credit, not draining, is a candidate, so a batch is placed exactly when it
///   would have been without a key; with no candidate the ready ring's next worker takes it;
/// - load is bounded (consistent hashing with bounded loads): a worker is a candidate only while it
///   runs fewer than `affinityLoadFactor` × the pool's mean batches per worker (counting this one),
///   so a hot key spills to its second choice instead of queueing behind its first while another
///   worker idles; under a backlog every worker is busy and keys stay home.
extension Scheduler {
    /// The worker to run the queued batch in `slot` on instead of `popped` (the ready ring's next worker,
    /// already taken off the ring), or nil to keep `popped`. When another worker is chosen, `popped`
    /// goes back to the front of the ring, where it was; the chosen one keeps its own ring entry
    /// (the caller takes one credit, and `nextWorker` drops the entry lazily once it has none).
    mutating func placeByAffinity(_ slot: Int, pool: String, popped: PeerID) -> PeerID? {
        guard config.affinityLoadFactor > 0 else { return nil }
        func read(_ b: inout BatchRecord<Payload>) -> UInt64 { b.meta.affinity }
        let key = read(&batches[slot: slot])
        guard key != 0 else { return nil }
        guard let chosen = affinityWorker(key: key, pool: pool) else {
            pools[pool]!.counters.affinityFallback += 1
            return nil
        }
        pools[pool]!.counters.affinityPlaced += 1
        guard chosen != popped, let generation = workers[popped]?.generation else { return nil }
        pools[pool]!.ready.prepend((popped, generation))
        return chosen
    }

    /// The worker of `pool` that `key` ranks highest among those that can take a batch now (credit,
    /// not draining, under the load bound), or nil when none can.
    func affinityWorker(key: UInt64, pool: String) -> PeerID? {
        guard let p = pools[pool] else { return nil }
        var live = 0
        for id in p.workers where workers[id]?.drainingSince == nil { live += 1 }
        guard live > 0 else { return nil }
        let bound = (config.affinityLoadFactor * Double(p.runningBatches + 1) / Double(live)).rounded(.up)
        var best: (id: PeerID, weight: UInt64, seed: UInt64)?
        for id in p.workers {
            guard let w = workers[id], w.credit > 0, w.drainingSince == nil, Double(w.running.count) < bound else { continue }
            let weight = AffinityPlacement.weight(key: key, seed: w.placementSeed)
            if let b = best, weight < b.weight || (weight == b.weight && w.placementSeed <= b.seed) { continue }
            best = (id, weight, w.placementSeed)
        }
        return best?.id
    }

    /// Where the ready ring and the workers' `inRing` flags disagree (for tests, with `checkInvariants`):
    /// a worker in the ring has exactly one entry of its registration there, any other none.
    public func checkPlacementInvariants() -> [String] {
        var problems: [String] = []
        for (name, p) in pools {
            var entries: [PeerID: Int] = [:]
            for entry in p.ready where workers[entry.worker]?.generation == entry.generation { entries[entry.worker, default: 0] += 1 }
            for id in p.workers {
                guard let w = workers[id] else { continue }
                let n = entries[id, default: 0]
                if w.inRing && n != 1 { problems.append("pool \(name): \(id) is in the ring with \(n) entries") }
                if !w.inRing && n != 0 { problems.append("pool \(name): \(id) is out of the ring with \(n) entries") }
                if !w.inRing && w.credit > 0 && w.drainingSince == nil { problems.append("pool \(name): \(id) has credit \(w.credit) but is not in the ring") }
            }
        }
        return problems
    }
}

/// Rendezvous hashing of affinity keys over workers, stable across broker runs (no per-process seed),
/// public so that tests and tools can tell where a key goes.
public enum AffinityPlacement {
    /// A worker's identity as a number: FNV-1a of its process (`host:pid`), or its routing id.
    public static func seed(_ identity: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in identity.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        return hash
    }

    /// The weight of a worker for a key; the heaviest worker that can take the batch gets it.
    public static func weight(key: UInt64, seed: UInt64) -> UInt64 {
        mix(key ^ mix(seed))
    }

    /// The identities in the order `key` prefers them (heaviest first).
    public static func ranking(key: UInt64, identities: [String]) -> [String] {
        identities.map { ($0, weight(key: key, seed: seed($0)), seed($0)) }
            .sorted { $0.1 != $1.1 ? $0.1 > $1.1 : $0.2 > $1.2 }
            .map(\.0)
    }

    /// MurmurHash3's 64-bit finalizer: every input bit moves every output bit.
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 33)) &* 0xff51_afd7_ed55_8ccd
        z = (z ^ (z >> 33)) &* 0xc4ce_b9fe_1a85_ec53
        return z ^ (z >> 33)
    }
}
