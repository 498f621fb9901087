import CompassSystem
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Exclusive ownership of a TP group's GPUs on this host: one `flock`ed file per GPU, held for the
/// worker's lifetime and released by the kernel when the worker dies, however it dies.
///
/// Each lock file also records the process group of the worker's engine. An engine outlives a
/// SIGKILLed worker (it is its own process group, holding GPU memory); the next worker to claim
/// the GPU finds that record, checks the group is the same one (by its start time), and kills it.
public final class GPUClaim {
    public let gpus: [Int]
    public let directory: String
    private var fds: [Int32]
    /// Engine process groups left alive by a previous owner of these GPUs.
    public let orphans: [OrphanEngine]

    public struct OrphanEngine: Sendable, Equatable {
        public let pgid: Int32
        public let previousOwner: Int32
    }

    struct Record: Codable {
        var pid: Int32
        var host: String
        var enginePgid: Int32?
        var engineStart: UInt64?

        enum CodingKeys: String, CodingKey { case pid, host, enginePgid = "engine_pgid", engineStart = "engine_start" }
    }

    /// Claims every GPU in `gpus` or none. Throws naming the holder's pid when one is taken.
    public init(gpus: [Int], directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var taken: [Int32] = []
        var orphans: [OrphanEngine] = []
        for gpu in gpus {
            let path = GPUClaim.path(directory, gpu)
            let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                taken.forEach { close($0) }
                throw GPUClaimError(message: "cannot open the lock file \(path): \(String(cString: strerror(errno)))")
            }
            if flock(fd, LOCK_EX | LOCK_NB) != 0 {
                let holder = GPUClaim.read(fd)
                close(fd)
                taken.forEach { close($0) }
                let who = holder.map { "pid \($0.pid) on \($0.host)" } ?? "another process"
                throw GPUClaimError(message: "GPU \(gpu) is already claimed by \(who) (lock \(path)); a GPU belongs to one worker")
            }
            if let previous = GPUClaim.read(fd), let orphan = GPUClaim.liveOrphan(previous) {
                if !orphans.contains(where: { $0.pgid == orphan }) { orphans.append(OrphanEngine(pgid: orphan, previousOwner: previous.pid)) }
            }
            taken.append(fd)
        }
        self.gpus = gpus
        self.directory = directory
        fds = taken
        self.orphans = orphans
        write(Record(pid: getpid(), host: GPUClaim.hostname(), enginePgid: nil, engineStart: nil))
    }

    /// Claims the first `count` free GPUs among `candidates`.
    public static func any(count: Int, of candidates: [Int], directory: String) throws -> GPUClaim {
        var free: [Int] = []
        for gpu in candidates where free.count < count {
            if let probe = try? GPUClaim(gpus: [gpu], directory: directory) {
                free.append(gpu)
                _ = probe // released at the end of this iteration; claimed together below
            }
        }
        guard free.count == count else {
            throw GPUClaimError(message: "--gpus auto needs \(count) free GPUs; only \(free.count) of \(candidates.count) (\(candidates.map(String.init).joined(separator: ","))) are free")
        }
        return try GPUClaim(gpus: free, directory: directory)
    }

    deinit { fds.forEach { close($0) } }

    /// Records the engine's process group in every lock file.
    public func recordEngine(pgid: Int32) {
        write(Record(pid: getpid(), host: GPUClaim.hostname(), enginePgid: pgid, engineStart: GPUClaim.startTime(pgid)))
    }

    /// Kills the orphaned engine groups found at claim time and waits (up to `timeout`) until they are gone.
    public func reapOrphans(timeout: Double = 10) -> [OrphanEngine] {
        for orphan in orphans { kill(-orphan.pgid, SIGKILL) }
        let deadline = MonotonicClock.nanoseconds() + UInt64(timeout * 1e9)
        while orphans.contains(where: { kill(-$0.pgid, 0) == 0 }) && MonotonicClock.nanoseconds() < deadline { usleep(20_000) }
        return orphans
    }

    private func write(_ record: Record) {
        guard let data = try? JSONEncoder().encode(record) else { return }
        for fd in fds {
            _ = ftruncate(fd, 0)
            _ = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        }
    }

    static func path(_ directory: String, _ gpu: Int) -> String { "\(directory)/gpu\(gpu).lock" }

    static func read(_ fd: Int32) -> Record? {
        var buffer = [UInt8](repeating: 0, count: 1024)
        let n = pread(fd, &buffer, buffer.count, 0)
        guard n > 0 else { return nil }
        return try? JSONDecoder().decode(Record.self, from: Data(buffer[0..<n]))
    }

    /// The recorded engine group if it is still alive and is the same group (not a reused id).
    static func liveOrphan(_ record: Record) -> Int32? {
        guard let pgid = record.enginePgid, pgid > 1, pgid != getpgrp(), kill(-pgid, 0) == 0 else { return nil }
        // While any member lives, Linux does not reuse the group's id for a new group leader; if the
        // leader itself is alive, its start time must match what was recorded.
        if let now = startTime(pgid), let then = record.engineStart, now != then { return nil }
        return pgid
    }

    /// A process's start time in clock ticks since boot (/proc/PID/stat field 22), or nil.
    static func startTime(_ pid: Int32) -> UInt64? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }

    static func hostname() -> String {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count)
        return String(decoding: name.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

public struct GPUClaimError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}

/// Which GPU indices `--gpus auto` may choose from: CUDA_VISIBLE_DEVICES when the scheduler set
/// it (numeric form), else every GPU NVML sees.
public func visibleGPUCandidates(environment: [String: String]) -> [Int]? {
    if let visible = environment["CUDA_VISIBLE_DEVICES"], !visible.isEmpty {
        let ids = visible.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        if !ids.isEmpty { return ids }
    }
    return NVML.deviceCount.map { Array(0..<$0) }
}
