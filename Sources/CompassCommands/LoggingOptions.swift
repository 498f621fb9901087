import ArgumentParser
import Foundation
import Logging

/// `--log-level`, shared by every command.
public struct LoggingOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    public var logLevel: String = "info"
    @Option(name: .long, help: "Log format: text (for people) or json (one object per line, for log shippers).")
    public var logFormat: String = "text"

    public init() {}

    public func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        guard ["text", "json"].contains(logFormat) else { throw ValidationError("--log-format must be text or json") }
    }

    /// Sends logs to stderr at the chosen level; returns a logger labelled `label`.
    public func bootstrap(_ label: String) -> Logger {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        let json = logFormat == "json"
        LoggingSystem.bootstrap { name in
            if json { return JSONLogHandler(label: name, logLevel: level) }
            var handler = StreamLogHandler.standardError(label: name)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}

/// A failure to show the user as one clear line, with an exit status.
struct CommandFailure: Error, CustomStringConvertible {
    let message: String
    var exitCode: Int32 = 1
    var description: String { message }
}

/// Prints `message` to stderr prefixed with the program name and exits with `code`.
func fail(_ program: String, _ message: String, code: Int32 = 1) -> ExitCode {
    FileHandle.standardError.write(Data("\(program): error: \(message)\n".utf8))
    return ExitCode(code)
}

/// The directory holding the running executable, where its sibling binaries live.
func executableDirectory() -> String {
    if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
        return (path as NSString).deletingLastPathComponent
    }
    return (CommandLine.arguments[0] as NSString).deletingLastPathComponent
}
