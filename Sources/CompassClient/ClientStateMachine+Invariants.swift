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
        // An unclaimed outcome claimed by a submit leaves its id in the order list (dropped later).
        let unclaimedIDs = Set(unclaimedOrder)
        for id in unclaimed.keys where !unclaimedIDs.contains(id) { problems.append("unclaimed \(id) is not in the order list") }
        if !delivered.isSubset(of: Set(deliveredOrder)) { problems.append("a delivered id is not in the order list") }
        if !out.isEmpty { problems.append("\(out.count) actions not collected") }
        return problems
    }
}
