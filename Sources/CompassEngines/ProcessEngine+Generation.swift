import CompassProtocol
import CompassSystem
import DequeModule
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

extension ProcessEngine {
    /// One run of the engine process: what the worker's thread and the generation's own thread share.
    /// Every decision about the process (spawn or not, stop, ended) is made under `control`'s lock,
    /// so a `stop()` can land at any moment, before the spawn, during it or after, and still be
    /// carried out: the generation's thread reads the decision after every step.
    final class Generation: Sendable {
        let number: Int
        /// Signalled when `control` changes: the generation's thread polls it with the engine's pipes.
        let wake: WakeupEvent
        let control = Mutex(Control())
        /// Signalled once when the generation has ended: the next generation's join.
        private let ended = DispatchSemaphore(value: 0)

        init(number: Int, wake: WakeupEvent) {
            self.number = number
            self.wake = wake
        }

        /// The generation's life. Its thread moves it forward; `stop()` only sets `stopRequested`.
        struct Control {
            enum Phase: Equatable {
                /// Waiting for the previous generation to end and for `beforeStart`.
                case waiting
                /// Decided to spawn; the process may or may not exist yet.
                case spawning
                /// The process runs as the leader of process group `group`.
                case running(group: Int32)
                /// Over: the process (if one was spawned) is reaped and its group SIGKILLed.
                case ended(group: Int32?)
            }

            var phase = Phase.waiting
            var stopRequested = false
            /// Chunks of lines for the engine's fd 3, taken by the generation's thread.
            var outbox: Deque<[UInt8]> = []

            /// Whether to spawn: not when a stop came first (the generation then ends at once).
            mutating func decideSpawn() -> Bool {
                guard phase == .waiting else { return false }
                phase = stopRequested ? .ended(group: nil) : .spawning
                return !stopRequested
            }

            mutating func spawned(group: Int32) {
                phase = .running(group: group)
            }

            /// The process group this generation left behind, which the next one waits to see gone.
            var group: Int32? {
                switch phase {
                case .running(let group): group
                case .ended(let group): group
                case .waiting, .spawning: nil
                }
            }
        }

        func requestStop() {
            control.withLock { $0.stopRequested = true }
            wake.signal()
        }

        func enqueue(_ chunks: [[UInt8]]) {
            let queued = control.withLock { c in
                guard !c.stopRequested else { return false }
                c.outbox.append(contentsOf: chunks)
                return true
            }
            if queued { wake.signal() }
        }

        /// Marks the generation over (called once, by its thread, last).
        func finish() {
            control.withLock { $0.phase = .ended(group: $0.group) }
            ended.signal()
        }

        /// Blocks until the generation has ended, or the timeout; true when it has.
        @discardableResult
        func awaitEnd(timeoutSeconds: Double = .infinity) -> Bool {
            let deadline: DispatchTime = timeoutSeconds.isFinite ? .now() + timeoutSeconds : .distantFuture
            guard ended.wait(timeout: deadline) == .success else { return false }
            ended.signal() // pass it on: every waiter sees the end
            return true
        }
    }

    /// The generation's thread: wait for the previous generation, spawn, then run the process's poll
    /// loop (EngineRun) until it has ended, and say why it died unless it was stopped.
    func supervise(_ gen: Generation, after previous: Generation?) {
        defer { gen.finish() }
        if let previous {
            // The last generation's processes must be gone before a new one takes the GPUs.
            previous.awaitEnd()
            if let group = previous.control.withLock({ $0.group }) { waitUntilGone(group: group) }
        }
        hooks.beforeStart()
        guard gen.control.withLock({ $0.decideSpawn() }) else { return }
        hooks.afterSpawnDecision()
        var process: EngineRun
        do {
            process = try EngineRun(command: command, wake: gen.wake)
        } catch {
            post(.died(code: .startupFailed, message: "cannot start the \(name) engine (\(command.executable)): \(error)"), gen)
            return
        }
        let pid = process.child.pid
        gen.control.withLock { $0.spawned(group: pid) }
        hooks.onSpawn(pid)
        logger.info("engine process started", metadata: ["engine": "\(name)", "pid": "\(pid)", "command": "\(command.executable) \(command.arguments.joined(separator: " "))"])
        process.run(gen, self)
        if gen.control.withLock({ $0.stopRequested }) { return }
        let (code, message) = process.classify()
        logger.error("engine ended", metadata: ["engine": "\(name)", "status": "\(process.status.map { "\($0)" } ?? "unknown")", "code": "\(code.rawValue)"])
        post(.died(code: code, message: message), gen)
    }

    /// Waits (bounded) until no process of `group` is left, then SIGKILLs any that is. The group's
    /// leader was reaped and the group SIGKILLed when its generation ended, so this is only for
    /// stragglers; no notification exists for a process group's end, hence the polling.
    func waitUntilGone(group: Int32) {
        let deadline = MonotonicClock.milliseconds() + 30_000
        while kill(-group, 0) == 0 && MonotonicClock.milliseconds() < deadline { usleep(20_000) }
        if kill(-group, 0) == 0 { kill(-group, SIGKILL) }
    }
}
