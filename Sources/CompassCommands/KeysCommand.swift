import ArgumentParser
import CompassSecurity
import Foundation
import ZMQ

struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Make and show CURVE key pairs for brokers, workers and producers.",
        discussion: """
        Files are ZeroMQ certificates (the zcert format): NAME.key holds the secret key (mode 0600, \
        keep it), NAME.pub the public key (give it to the broker's allowlist). See docs/security.md.
        """,
        subcommands: [New.self, Show.self])

    struct New: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write NAME.key (secret) and NAME.pub (public).")
        @Argument(help: "The key's name (e.g. broker, worker-gpu7, alice).") var name: String
        @Option(help: "The directory to write into.") var dir = "."

        func run() throws {
            guard ZMQContext.has("curve") else { throw fail("compass keys", "this libzmq was built without CURVE (libsodium)") }
            do {
                let made = try KeyFiles.create(name: name, in: dir)
                print("secret key: \(made.secret) (mode 0600: keep it private)")
                print("public key: \(made.public)")
                print(made.keys.publicKey)
            } catch let error as SecurityError {
                throw fail("compass keys", error.message)
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the public key of a .pub or .key file.")
        @Argument(help: "The key file.") var file: String

        func run() throws {
            do {
                print(try KeyFiles.loadPublic(file))
            } catch let error as SecurityError {
                throw fail("compass keys", error.message)
            }
        }
    }
}

/// `--curve-server-key` and `--curve-key`, for everything that connects to a broker.
struct CurveClientOptions: ParsableArguments {
    @Option(help: "The broker's public CURVE key: 40 Z85 characters, or its .pub file. Turns on CURVE.")
    var curveServerKey: String?
    @Option(help: "This process's secret CURVE key file (from 'compass keys new'); its public key must be in the broker's allowlist.")
    var curveKey: String?

    func load(_ program: String) throws -> CurveClientKeys? {
        do {
            return try CurveClientKeys.load(serverKey: curveServerKey, keyFile: curveKey)
        } catch let error as SecurityError {
            throw fail(program, error.message, code: 2)
        }
    }
}
