import CompassProtocol
import Synchronization

/// Where one waiting request's result goes: resumed once, by whichever comes first (the batch's
/// answer, the deadline, or cancellation), even before the caller has started to wait.
final class Slot: Sendable {
    private struct State {
        var continuation: CheckedContinuation<InferenceResult, any Error>?
        var early: Result<InferenceResult, any Error>?
        var finished = false
    }
    private let state = Mutex(State())

    var isFinished: Bool { state.withLock { $0.finished } }

    func set(_ continuation: CheckedContinuation<InferenceResult, any Error>) {
        let early: Result<InferenceResult, any Error>? = state.withLock { s in
            if let e = s.early { s.early = nil; return e }
            s.continuation = continuation
            return nil
        }
        if let early { continuation.resume(with: early) }
    }

    /// True when this call delivered the result (false: something else already had).
    @discardableResult
    func resume(_ result: Result<InferenceResult, some Error>) -> Bool {
        let mapped = result.mapError { $0 as any Error }
        let (delivered, continuation): (Bool, CheckedContinuation<InferenceResult, any Error>?) = state.withLock { s in
            guard !s.finished else { return (false, nil) }
            s.finished = true
            if let c = s.continuation { s.continuation = nil; return (true, c) }
            s.early = mapped
            return (true, nil)
        }
        continuation?.resume(with: mapped)
        return delivered
    }
}
