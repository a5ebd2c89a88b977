import ArgumentParser
import ConvoyTensor
import ConvoyTrain
import Foundation

/// `convoy bench tokenize`: encoding throughput of a tokenizer on a file, single-threaded and in parallel
/// chunks cut at safe points, checking that both give the same ids.
struct BenchTokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Tokenizer throughput (bytes/s) on a file, one thread and parallel; scripts/tokenizer_bench.py sets it beside Hugging Face tokenizers.")

    @Option(help: "tokenizer.json, vocab.json, a directory holding either, or bytes.") var tokenizer: String
    @Option(help: "Text file to encode.") var input: String
    @Option(help: "Threads for the parallel encode.") var threads: Int = ComputePool.defaultThreadCount
    @Option(name: .customLong("chunk-bytes"), help: "Target chunk size of the parallel encode.") var chunkBytes: Int = 1 << 20
    @Option(help: "Timed repetitions (the best is reported).") var repetitions: Int = 3
    @Flag(help: "End with one JSON line of the results.") var json = false

    func validate() throws {
        try InputBounds.check(threads, InputBounds.threads, flag: "--threads")
        guard repetitions > 0 else { throw ValidationError("--repetitions must be positive, got \(repetitions)") }
        guard chunkBytes > 0 else { throw ValidationError("--chunk-bytes must be positive, got \(chunkBytes)") }
    }

    func run() throws {
        var start = DispatchTime.now().uptimeNanoseconds
        let tokenizer = try TokenizerLoader.load(path: tokenizer)
        let loadSeconds = Self.seconds(since: start)
        let bytes: [UInt8]
        do {
            bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: input)))
        } catch {
            throw ConvoyError.io("cannot read --input \(input): \(error.localizedDescription)")
        }
        guard !bytes.isEmpty else { throw ConvoyError.invalidConfiguration("--input \(input) is empty; give a text file to encode") }

        var serialIDs: [Int32] = [], serialSeconds = Double.infinity
        for _ in 0..<repetitions {
            start = DispatchTime.now().uptimeNanoseconds
            serialIDs = tokenizer.encode(bytes: bytes)
            serialSeconds = min(serialSeconds, Self.seconds(since: start))
        }
        let pool = ComputePool(threadCount: threads)
        var parallelIDs: [Int32] = [], parallelSeconds = Double.infinity
        for _ in 0..<repetitions {
            start = DispatchTime.now().uptimeNanoseconds
            parallelIDs = tokenizer.encodeInParallel(bytes: bytes, chunkBytes: chunkBytes, pool: pool)
            parallelSeconds = min(parallelSeconds, Self.seconds(since: start))
        }
        guard parallelIDs == serialIDs else {
            throw ConvoyError.incompatible("the parallel encode gave different ids from the single-threaded one (\(parallelIDs.count) against \(serialIDs.count) tokens); a safe cut is not safe")
        }
        let chunks = bytes.withUnsafeBufferPointer { tokenizer.chunkBoundaries(of: $0, chunkBytes: chunkBytes).count - 1 }
        let serialRate = Double(bytes.count) / serialSeconds, parallelRate = Double(bytes.count) / parallelSeconds
        print("\(input): \(bytes.count) bytes → \(serialIDs.count) tokens (\(String(format: "%.2f", Double(bytes.count) / Double(max(serialIDs.count, 1)))) bytes/token), vocabulary \(tokenizer.vocabularySize), loaded in \(String(format: "%.2f", loadSeconds)) s; best of \(repetitions)")
        print("encode                     MB/s   tokens/s")
        print(String(format: "1 thread            %11.2f  %9.0f", serialRate / 1e6, Double(serialIDs.count) / serialSeconds))
        print(String(format: "%-3d threads, %-4d chunks %6.2f  %9.0f  (×%.2f; ids identical)", threads, chunks, parallelRate / 1e6, Double(serialIDs.count) / parallelSeconds, parallelRate / serialRate))
        if json {
            let object: [String: Any] = [
                "input": input, "bytes": bytes.count, "tokens": serialIDs.count, "vocabulary_size": tokenizer.vocabularySize,
                "fingerprint": tokenizer.fingerprint, "load_seconds": loadSeconds, "repetitions": repetitions,
                "single_thread_bytes_per_second": serialRate, "parallel_bytes_per_second": parallelRate,
                "threads": threads, "chunks": chunks, "parallel_speedup": parallelRate / serialRate, "parallel_ids_identical": true,
            ]
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
        }
    }

    private static func seconds(since start: UInt64) -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
}
