import CompassSystem
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A failure of the test harness itself (a binary missing, a deadline passed).
struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The built executables: next to the test bundle in .build/<triple>/debug, or COMPASS_BIN_DIR.
enum Binaries {
    static let directory: String = {
        if let dir = ProcessInfo.processInfo.environment["COMPASS_BIN_DIR"] { return dir }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return (exe as NSString).deletingLastPathComponent
    }()

    static func path(_ name: String) throws -> String {
        let path = "\(directory)/\(name)"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw HarnessError("\(path) is missing: build everything first (swift build --build-tests)")
        }
        return path
    }
}

/// A temporary directory removed when released.
final class TempDir: @unchecked Sendable {
    // @unchecked: `path` is immutable.
    let path: String

    init() {
        path = NSTemporaryDirectory() + "compass-test-" + UUID().uuidString.prefix(8)
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String) -> String { "\(path)/\(name)" }
}

/// A real process started for a test, its output in a log file. Its whole process group is
/// SIGKILLed when the object is released, so no test leaves processes behind, failing or not.
final class Spawned: @unchecked Sendable {
    // @unchecked: used from one test at a time; ChildProcess keeps its own state.
    let child: ChildProcess
    let logPath: String
    let name: String

    init(_ binary: String, _ arguments: [String], in dir: TempDir, name: String, environment: [String: String] = [:]) throws {
        self.name = name
        logPath = dir.file("\(name).log")
        var env = ChildProcess.environmentDictionary()
        for (k, v) in environment { env[k] = v }
        // Both streams append to one file (without O_APPEND on both, one would overwrite the other).
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let flags = O_WRONLY | O_APPEND
        // A name is one of the built executables; an absolute path is run as it is (cc, a binary a test built).
        child = try ChildProcess(executable: binary.hasPrefix("/") ? binary : try Binaries.path(binary), arguments: arguments, environment: env,
                                 newProcessGroup: true,
                                 files: [.open(path: logPath, flags: flags, as: 1), .open(path: logPath, flags: flags, as: 2)])
    }

    deinit {
        child.signalGroup(SIGKILL)
        child.wait(timeoutSeconds: 5)
    }

    var pid: Int32 { child.pid }

    func log() -> String {
        (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    }

    /// Waits until the log contains `text`; returns the first line containing it. Async, and it
    /// sleeps between looks: a blocking wait held one of the few threads that every test's async
    /// work shares (two on a 2-core machine), so tests of other suites running beside it missed
    /// their own deadlines.
    @discardableResult
    func waitForLog(_ text: String, timeout: Double = 20) async throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let line = log().split(separator: "\n").first(where: { $0.contains(text) }) { return String(line) }
            if let status = child.poll() {
                throw HarnessError("\(name) exited (\(status)) before logging '\(text)'; log:\n\(log())")
            }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        throw HarnessError("\(name) did not log '\(text)' within \(timeout) s; log:\n\(log())")
    }

    /// Waits for the process to exit; throws with its log if it does not in time. Async, as
    /// `waitForLog` is, for the same reason.
    func waitForExit(timeout: Double = 60) async throws -> CompassSystem.ExitStatus {
        guard let status = try await exitStatus(of: child, timeout: timeout) else {
            throw HarnessError("\(name) still running after \(timeout) s; log:\n\(log())")
        }
        return status
    }
}

/// The child's exit status once it exits, nil if it is still running after `timeout` seconds;
/// polled every 10 ms with the task asleep in between (ChildProcess.wait would block a thread
/// that the tests' async work shares).
func exitStatus(of child: ChildProcess, timeout: Double) async throws -> CompassSystem.ExitStatus? {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if let status = child.poll() { return status }
        if Date() >= deadline { return nil }
        try await Task.sleep(nanoseconds: 10_000_000)
    }
}

/// Waits until `condition` holds, checking every 10 ms, or fails after `timeout` seconds.
func eventually(_ what: String, timeout: Double = 20, _ condition: () async throws -> Bool) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try await condition() { return }
        try await Task.sleep(nanoseconds: 10_000_000)
    }
    throw HarnessError("timed out after \(timeout) s waiting for: \(what)")
}
