import ArgumentParser
import CompassJournal
import Foundation

struct JournalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "journal",
        abstract: "Inspect and maintain a broker's journal.",
        subcommands: [Stats.self, Compact.self, Export.self])

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "What the journal holds, per pool (safe while the broker runs).")
        @Argument(help: "The journal file.") var path: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let stats = try open(path).stats()
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(stats), as: UTF8.self))
                return
            }
            print("\(stats.path): \(stats.fileBytes) bytes on disk")
            print("POOL              QUEUED  DISPATCHED  RESULTS  FAILED  BYTES")
            for p in stats.pools {
                print([p.pool.padding(toLength: 16, withPad: " ", startingAt: 0), "\(p.queued)".leftPad(7), "\(p.dispatched)".leftPad(11),
                       "\(p.results)".leftPad(8), "\(p.failed)".leftPad(7), "\(p.bytes)".leftPad(10)].joined(separator: " "))
            }
        }
    }

    struct Compact: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Shrink the journal file to what it holds (stop the broker first).")
        @Argument(help: "The journal file.") var path: String

        func run() throws {
            let (before, after) = try open(path).compact()
            print("\(path): \(before) -> \(after) bytes")
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the failed requests as JSONL (a dead-letter file to submit again).",
            discussion: "Exports the requests of failed batches and the requests that failed alone inside a result, as they were submitted.")
        @Argument(help: "The journal file.") var path: String
        @Option(help: "Where to write the failed requests.") var out: String

        func run() throws {
            let count = try open(path).exportFailed(to: out)
            print("wrote \(count) failed requests to \(out)")
        }
    }
}

private func open(_ path: String) throws -> Journal {
    do {
        return try Journal.inspect(path: path)
    } catch let error as JournalError {
        throw fail("compass journal", error.message)
    }
}

extension String {
    func leftPad(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}
