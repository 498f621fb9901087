import CompassJournal
import CompassProtocol
import CompassScheduler
import CompassWire
import Logging
import ZMQ

extension Broker {
    /// Carries out the scheduler's actions, and the follow-ups that sending them causes.
    func execute(_ actions: consuming [SchedulerAction<Frame>]) {
        // Straight from the array they came in (copying every action into `pending` first would
        // retain and release each frame it holds once more), each moved out of it in turn (a
        // `for` loop would copy each action and leave the array to destroy it again); follow-ups,
        // rare, go after them.
        var actions = actions
        actions.reverse()
        while let action = actions.popLast() { perform(action) }
        // Its storage takes the scheduler's next actions (one allocation less per message).
        scheduler.recycle(&actions)
        while !pending.isEmpty {
            let followUps = pending
            pending.removeAll(keepingCapacity: true)
            for action in followUps { perform(action) }
        }
    }

    /// Carries out one action; a send that finds a worker gone adds the follow-ups to `pending`.
    func perform(_ action: SchedulerAction<Frame>) {
        switch action {
        case .toWorker(let id, let output) where journal != nil:
            outbox.append(.worker(id, encode(output)))
        case .toProducer(let route, let output) where journal != nil:
            outbox.append(.producer(route, encode(output)))
        case .toWorker(let id, let output):
            if !sendWorker(id, encode(output)) {
                pending += scheduler.workerUnreachable(id, now: now)
            }
        case .toProducer(let route, let output):
            sendProducer(route, encode(output))
        case .event(let event):
            note(event)
        case .journal(let operation):
            journalOperations.append(operation)
        }
    }

    /// The end of a poll turn with a journal: commit the turn's records in one transaction (group
    /// commit), then send the messages that waited for them, and repeat for what those sends caused.
    /// If the journal cannot be written the broker stops: nothing it has not made durable was
    /// acknowledged, and producers re-submit to the next broker.
    func endTurn() throws {
        guard let journal else { return }
        while !journalOperations.isEmpty || !outbox.isEmpty {
            if !journalOperations.isEmpty {
                do {
                    try journal.commit(journalOperations)
                } catch {
                    logger.critical("cannot write the journal; stopping so that nothing unwritten is acknowledged", metadata: ["error": "\(error)"])
                    throw error
                }
                journalOperations.removeAll(keepingCapacity: true)
            }
            let sends = outbox
            outbox.removeAll(keepingCapacity: true)
            for message in sends {
                switch message {
                case .worker(let id, let m):
                    if !sendWorker(id, m) { execute(scheduler.workerUnreachable(id, now: now)) }
                case .producer(let route, let m):
                    sendProducer(route, m)
                }
            }
        }
    }

    func encode(_ output: WorkerOutput<Frame>) -> BrokerWorkerMessage {
        switch output {
        case .welcome(let workerID, let creditMode):
            // `credit_mode` is said only when explicit: an implicit WELCOME stays as it always was.
            return .welcome(settings: jsonFrame(WorkerWelcome(
                workerID: workerID, heartbeatMilliseconds: UInt32(options.scheduler.heartbeatMilliseconds),
                liveness: UInt32(options.scheduler.liveness), creditMode: creditMode == .explicit ? .explicit : nil)))
        case .batch(let id, let attempt, let meta, let payload):
            return .batch(batchID: id, attempt: attempt, meta: meta, payload: payload)
        case .cancel(let id, let attempt):
            return .cancel(batchID: id, attempt: attempt)
        case .heartbeat:
            return .heartbeat
        case .disconnect(let reason):
            return .disconnect(reason: reason)
        }
    }

    func encode(_ output: ProducerOutput<Frame>) -> ProducerReply {
        switch output {
        case .welcome(let session, let pending):
            return .welcome(session: session, info: jsonFrame(ProducerWelcome(
                brokerID: instanceID, brokerVersion: compassVersion, heartbeatMilliseconds: UInt32(options.scheduler.heartbeatMilliseconds),
                liveness: UInt32(options.scheduler.liveness), pendingResults: pending, maxPayloadBytes: options.maxPayloadBytes)))
        case .accepted(let id):
            return .accepted(batchID: id)
        case .rejected(let id, let code, let message, let retry):
            return .rejected(batchID: id, code: code.rawValue, message: message, retryAfterMilliseconds: retry)
        case .progress(let id, let done, let total):
            return .progress(batchID: id, done: done, total: total)
        case .result(let id, let attempts, let stats, let payload):
            return .result(batchID: id, attempts: attempts, stats: stats, payload: payload)
        case .failed(let id, let attempts, let code, let message, let partial):
            return .failed(batchID: id, attempts: attempts, code: code.rawValue, message: message, partial: partial ?? Frame(bytes: [UInt8]()))
        case .heartbeat:
            return .heartbeat(brokerID: instanceID)
        }
    }

    /// Sends to a worker; false when it cannot be reached or is not reading (its queue is full).
    @discardableResult
    func sendWorker(_ id: PeerID, _ message: BrokerWorkerMessage) -> Bool {
        do {
            let sent = try backend.send(dontWait: true) { m in
                m.append(bytes: id.bytes)
                message.write(to: &m)
            }
            if sent { return true }
            logger.warning("worker is not reading (send queue full); dropping it", metadata: ["worker": "\(id)"])
        } catch let error as ZMQError where error.isHostUnreachable {
            logger.debug("worker unreachable", metadata: ["worker": "\(id)"])
        } catch {
            logger.error("send to worker failed", metadata: ["worker": "\(id)", "error": "\(error)"])
        }
        return false
    }

    /// Sends to a producer. When it is gone or not reading, its results stay held for its next HELLO.
    func sendProducer(_ route: PeerID, _ message: ProducerReply) {
        do {
            let sent = try frontend.send(dontWait: true) { m in
                m.append(bytes: route.bytes)
                message.write(to: &m)
            }
            if sent { return }
            badInput.warning(logger, "producer is not reading (send queue full); its results wait for its next HELLO",
                             metadata: ["producer": "\(route)"])
        } catch let error as ZMQError where error.isHostUnreachable {
            logger.debug("producer unreachable", metadata: ["producer": "\(route)"])
        } catch {
            logger.error("send to producer failed", metadata: ["producer": "\(route)", "error": "\(error)"])
        }
        scheduler.producerUnreachable(route)
    }

    /// Logs a scheduler event and counts it.
    func note(_ event: SchedulerEvent) {
        metrics.note(event)
        switch event {
        case .workerRegistered:
            break // logged with its capabilities when READY arrived
        case .workerLost(let worker, let pool, let reason, let requeued):
            capabilities[worker] = nil
            heartbeatStats[worker] = nil
            logger.warning("worker lost", metadata: ["worker": "\(worker)", "pool": "\(pool)", "reason": "\(reason)", "requeued": "\(requeued)"])
        case .workerLeft(let worker, let pool):
            capabilities[worker] = nil
            heartbeatStats[worker] = nil
            logger.info("worker left", metadata: ["worker": "\(worker)", "pool": "\(pool)"])
        case .requeued(let id, let attempt, let code, let reason):
            logger.info("batch requeued", metadata: ["batch": "\(id)", "attempt": "\(attempt)", "code": "\(code)", "reason": "\(reason)"])
        case .completed(let id, let pool, let attempts, let latency):
            logger.trace("batch completed", metadata: ["batch": "\(id)", "pool": "\(pool)", "attempts": "\(attempts)", "latency_ms": "\(latency)"])
        case .failed(let id, let pool, let code, let message):
            logger.warning("batch failed", metadata: ["batch": "\(id)", "pool": "\(pool)", "code": "\(code)", "reason": "\(message)"])
        case .staleDropped(let id, let worker, let attempt):
            logger.debug("stale result dropped", metadata: ["batch": "\(id)", "worker": "\(worker)", "attempt": "\(attempt)"])
        case .unknownWorker(let worker):
            logger.info("message from unknown worker; asked it to register", metadata: ["worker": "\(worker)"])
        case .rejected(let code, let message):
            if code != .busy { badInput.warning(logger, "submit rejected", metadata: ["code": "\(code.rawValue)", "reason": "\(message)"]) }
        case .split(let id, let requests, let depth, let kills, let code):
            logger.warning("batch keeps killing engines; split in halves to isolate the request", metadata: [
                "batch": "\(id)", "requests": "\(requests)", "depth": "\(depth)", "kills": "\(kills)", "code": "\(code)"])
        case .isolated(let id, let requests, let code, let message):
            logger.warning("request(s) isolated and failed; the rest of the batch goes on", metadata: [
                "batch": "\(id)", "requests": "\(requests)", "code": "\(code)", "reason": "\(message)"])
        case .resultExpired(let id, let session):
            logger.warning("result dropped: not collected within the retention time", metadata: ["batch": "\(id)", "session": "\(session)"])
        }
    }
}
