import CompassEngines
import CompassProtocol
import CompassSystem
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// A worker's GPUs: the claim on them, their NVML figures, and the engine hooks that keep an engine
/// off GPUs whose memory a dead predecessor still holds.
public final class WorkerGPUs: Sendable {
    public let indices: [Int]
    let claim: ClaimBox?
    /// Memory in use on each GPU before the first engine started (MiB), the level to return to.
    let baseline: [Int: Int]
    let releaseTimeoutSeconds: Double
    let logger: Logger

    /// `GPUClaim` is used from the engine's thread (recordEngine) and held for the worker's life.
    final class ClaimBox: @unchecked Sendable {
        // @unchecked: recordEngine writes lock files with pwrite; it is only called from one thread at a time.
        let claim: GPUClaim
        init(_ claim: GPUClaim) { self.claim = claim }
    }

    /// Claims `requested` GPUs (or `tp` free ones with "auto"), kills engines a dead owner left on
    /// them, and notes their memory baseline. No GPUs requested: CPU mode.
    public init(requested: String?, tp: Int, lockDirectory: String, releaseTimeoutSeconds: Double, logger: Logger) throws {
        self.logger = logger
        self.releaseTimeoutSeconds = releaseTimeoutSeconds
        let nvmlProblem = NVML.unavailableReason
        guard let requested, !requested.isEmpty else {
            indices = []
            claim = nil
            baseline = [:]
            logger.info("no GPUs requested: CPU mode (the engine sees CUDA_VISIBLE_DEVICES=\"\")")
            return
        }
        let grabbed: GPUClaim
        if requested == "auto" {
            guard let candidates = visibleGPUCandidates(environment: ChildProcess.environmentDictionary()) else {
                throw GPUClaimError(message: "--gpus auto found no GPUs (\(nvmlProblem ?? "NVML sees none")); list them with --gpus 0,1,...")
            }
            grabbed = try GPUClaim.any(count: tp, of: candidates, directory: lockDirectory)
        } else {
            grabbed = try GPUClaim(gpus: requested.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) },
                                   directory: lockDirectory)
        }
        indices = grabbed.gpus
        claim = ClaimBox(grabbed)
        if let nvmlProblem {
            logger.warning("NVML unavailable (\(nvmlProblem)): GPUs \(indices) are claimed by index only; no memory or utilization figures")
        }
        for orphan in grabbed.reapOrphans() {
            logger.warning("killed an engine left running by a dead worker", metadata: [
                "process_group": "\(orphan.pgid)", "previous_worker_pid": "\(orphan.previousOwner)"])
        }
        var base: [Int: Int] = [:]
        for info in NVML.infos(indices) { if let used = info.memoryUsedMiB { base[info.index] = used } }
        baseline = base
        logger.info("claimed GPUs", metadata: ["gpus": "\(indices)", "names": "\(NVML.infos(indices).compactMap(\.name))",
                                               "memory_used_mib": "\(base.sorted { $0.key < $1.key }.map(\.value))"])
    }

    /// Current figures of the claimed GPUs.
    public func info() -> [GPUInfo] { NVML.infos(indices) }

    /// Engine hooks: wait for GPU memory before each start, record the engine's group in the locks.
    public var hooks: EngineHooks {
        EngineHooks(beforeStart: { [self] in self.waitForMemoryRelease() },
                    onSpawn: { [claim] pgid in claim?.claim.recordEngine(pgid: pgid) })
    }

    /// Blocks (on the engine's thread) until every GPU is back near its baseline, or the timeout.
    func waitForMemoryRelease() {
        guard !baseline.isEmpty else { return }
        let slackMiB = 1024
        func over() -> [GPUInfo] {
            info().filter { g in (g.memoryUsedMiB ?? 0) > (baseline[g.index] ?? 0) + slackMiB }
        }
        var busy = over()
        guard !busy.isEmpty else { return }
        let started = MonotonicClock.milliseconds()
        logger.info("waiting for GPU memory to be released", metadata: [
            "used_mib": "\(busy.map { "gpu\($0.index)=\($0.memoryUsedMiB ?? 0)" })", "baseline_mib": "\(baseline)"])
        let deadline = started + UInt64(releaseTimeoutSeconds * 1000)
        while !busy.isEmpty && MonotonicClock.milliseconds() < deadline {
            usleep(100_000)
            busy = over()
        }
        let waited = MonotonicClock.milliseconds() - started
        if busy.isEmpty {
            logger.info("GPU memory released", metadata: ["after_ms": "\(waited)", "used_mib": "\(info().map { "gpu\($0.index)=\($0.memoryUsedMiB ?? 0)" })"])
        } else {
            logger.warning("GPU memory still in use after the release timeout; starting the engine anyway", metadata: [
                "after_ms": "\(waited)", "used_mib": "\(busy.map { "gpu\($0.index)=\($0.memoryUsedMiB ?? 0)" })"])
        }
    }
}
