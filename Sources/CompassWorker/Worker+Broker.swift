import CompassEngines
import CompassProtocol
import CompassSystem
import CompassWire
import Foundation
import ZMQ

extension Worker {
    func receiveFromBroker() throws {
        while let socket, let frames = try socket.receive(dontWait: true) {
            lastHeard = now
            let message: BrokerWorkerMessage
            do {
                message = try BrokerWorkerMessage.decode(frames[...])
            } catch {
                logger.warning("bad message from the broker", metadata: ["error": "\(error)"])
                continue
            }
            handle(message)
        }
    }

    func handle(_ message: BrokerWorkerMessage) {
        switch message {
        case .welcome(let settings):
            if let welcome = try? settings.withUnsafeBytes({ try JSONDecoder().decode(WorkerWelcome.self, from: Data($0)) }) {
                heartbeatMilliseconds = UInt64(max(10, welcome.heartbeatMilliseconds))
                liveness = UInt64(max(1, welcome.liveness))
            }
            registered = true
            reconnectDelay = options.reconnectMinMilliseconds
            logger.info("registered with broker", metadata: ["worker": "\(identity)", "heartbeat_ms": "\(heartbeatMilliseconds)"])
        case .batch(let id, let attempt, let meta, let payload):
            if drainingSince != nil {
                send(.failed(batchID: id, attempt: attempt, code: FailureCode.handedBack.rawValue, retryable: true,
                             message: "worker is draining", partial: Frame(bytes: [UInt8]())))
                return
            }
            queue.append(EngineJob(batchID: id, attempt: attempt, meta: meta, payload: payload.bytes))
            startNext()
        case .cancel(let id, let attempt):
            if let index = queue.firstIndex(where: { $0.batchID == id && $0.attempt == attempt }) {
                queue.remove(at: index)
                send(.failed(batchID: id, attempt: attempt, code: FailureCode.cancelled.rawValue, retryable: false,
                             message: "cancelled before it started", partial: Frame(bytes: [UInt8]())))
            } else if running.contains(where: { $0.batchID == id && $0.attempt == attempt }) {
                engine.cancel(batchID: id, attempt: attempt)
            }
        case .heartbeat:
            break
        case .disconnect(let reason):
            // The broker does not know us (it restarted, or declared us dead): register again.
            // Batches not started are the broker's to requeue; a running one still reports.
            logger.warning("broker asked us to register again", metadata: ["reason": "\(reason)"])
            queue.removeAll()
            registered = false
            sendReady()
        }
    }

    func handleSignal(_ sig: Int32) {
        if drainingSince != nil {
            logger.warning("second \(signalName(sig)): handing back and exiting now")
            handBackRunning()
            exitCode = 0
            return
        }
        drainingSince = now
        logger.info("\(signalName(sig)): draining", metadata: ["running": "\(running.map(\.batchID))", "queued": "\(queue.count)"])
        send(.bye(reason: "\(signalName(sig))"))
        for job in queue {
            send(.failed(batchID: job.batchID, attempt: job.attempt, code: FailureCode.handedBack.rawValue, retryable: true,
                         message: "worker is draining", partial: Frame(bytes: [UInt8]())))
        }
        queue.removeAll()
    }

    /// Stops the engine and lets the last messages (results, BYE) leave before the socket closes.
    func shutdown() {
        engine.stop()
        if let socket {
            try? socket.set(.linger(milliseconds: 2000))
        }
        socket = nil
        logger.info("worker stopped", metadata: ["completed": "\(completed)", "engine_restarts": "\(restarts)"])
    }
}
