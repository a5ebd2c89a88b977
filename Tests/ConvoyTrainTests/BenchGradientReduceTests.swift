import Foundation
import Testing

/// `convoy bench ddp` and `convoy bench zero` share `--grad-reduce-dtype` (read by the training setting), run as
/// the built executable.
@Suite(.serialized) struct BenchGradientReduceTests {
    let tinyDDP = ["bench", "ddp", "--ranks", "2", "--layers", "1", "--d-model", "16", "--heads", "2", "--context", "16",
                   "--batch-per-rank", "2", "--warmup", "1", "--steps", "2", "--json"]

    @Test(arguments: ["ddp", "zero"])
    func anUnknownGradientReduceDTypeIsRefused(bench: String) throws {
        let result = try runConvoy(["bench", bench, "--grad-reduce-dtype", "fp16"])
        #expect(result.status != 0, "bench \(bench) accepted --grad-reduce-dtype fp16")
        for words in ["--grad-reduce-dtype", "\"fp32\"", "\"bf16\"", "fp16"] {
            #expect(result.error.contains(words), "bench \(bench): '\(result.error)' should mention \(words)")
        }
        #expect(!result.error.contains("Fatal error") && !result.error.contains("Backtrace"), "\(result.error)")
    }

    /// DDP reduces in the dtype asked for: the all-reduces of a bf16 run send exactly half the bytes of an fp32
    /// run (same model, same buckets), and the JSON says which dtype it used.
    @Test func benchDDPAllReducesBF16WhenAsked() throws {
        func run(_ dtype: String) throws -> [String: Any] {
            let result = try runConvoy(tinyDDP + ["--grad-reduce-dtype", dtype])
            #expect(result.status == 0, "\(dtype): \(result.error)")
            let line = try #require(result.output.split(separator: "\n").last)
            return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        }
        let fp32 = try run("fp32"), bf16 = try run("bf16")
        #expect(fp32["grad_reduce_dtype"] as? String == "fp32" && bf16["grad_reduce_dtype"] as? String == "bf16")
        let fp32Bytes = try #require(fp32["allreduce_bytes_per_step"] as? Int), bf16Bytes = try #require(bf16["allreduce_bytes_per_step"] as? Int)
        #expect(fp32Bytes > 0 && bf16Bytes * 2 == fp32Bytes, "all-reduced per step: fp32 \(fp32Bytes) B, bf16 \(bf16Bytes) B")
    }
}
