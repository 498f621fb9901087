extension ClientStateMachine {
    /// Checks the invariants (see the type's documentation); returns a description of each
    /// violation, empty when sound. For tests: cheap enough to call after every step. Meant for
    /// the moment between events, after the actions of the last one were collected.
    func checkInvariants() -> [String] {
        var problems: [String] = []
        var callers = Set<CallerID>()
        for (id, o) in outstanding {
            if o.submission.batchID != id { problems.append("outstanding[\(id)] holds batch \(o.submission.batchID)") }
            if !callers.insert(o.caller).inserted { problems.append("caller \(o.caller) waits for two batches") }
            if o.sessionRetries > Self.maxSessionRetries { problems.append("\(id): \(o.sessionRetries) session retries") }
            if o.busyCount < 0 { problems.append("\(id): busy count \(o.busyCount)") }
            if unclaimed[id] != nil { problems.append("\(id) is outstanding and unclaimed at once") }
        }
        for pool in waitingPools where !outstanding.values.contains(where: { $0.submission.pool == pool && $0.poolWaitSince != nil }) {
            problems.append("pool \(pool) is announced as waited for, but no batch waits for it")
        }
        for waiter in statusWaiters where !callers.insert(waiter.caller).inserted {
            problems.append("caller \(waiter.caller) waits twice")
        }
        if refused != nil && (!outstanding.isEmpty || !statusWaiters.isEmpty) {
            problems.append("the handshake was refused but \(outstanding.count) batches and \(statusWaiters.count) STATUS queries wait")
        }
        if closed && (!outstanding.isEmpty || !statusWaiters.isEmpty || helloBeforeRetry) {
            problems.append("closed but \(outstanding.count) batches and \(statusWaiters.count) STATUS queries wait")
        }
        if unclaimedOrder.count > Self.rememberedOutcomes || deliveredOrder.count > Self.rememberedOutcomes {
            problems.append("remembered \(unclaimedOrder.count) unclaimed and \(deliveredOrder.count) delivered ids")
        }
        // Each order list holds its ids once each, and nothing else (a claimed outcome leaves it).
        if unclaimedOrder.count != unclaimed.count || !unclaimedOrder.allSatisfy({ unclaimed[$0] != nil }) {
            problems.append("\(unclaimed.count) unclaimed outcomes, but \(unclaimedOrder.count) ids in their order list")
        }
        if deliveredOrder.count != delivered.count || !deliveredOrder.allSatisfy(delivered.contains) {
            problems.append("\(delivered.count) delivered ids, but \(deliveredOrder.count) in their order list")
        }
        for id in unclaimed.keys where delivered.contains(id) { problems.append("\(id) is delivered and unclaimed at once") }
        if !out.isEmpty { problems.append("\(out.count) actions not collected") }
        return problems
    }
}
