import ConvoyNN
import ConvoyTensor
import Foundation
import Testing

/// Property tests of the safetensors parser: random bytes and random mutations of a valid file are always
/// either refused with a ``ConvoyError`` or loaded into tensors whose sizes agree with the file — never a
/// crash. Seeded and bounded, so every run checks the same inputs.
@Suite struct SafeTensorsFuzzTests {
    /// A seeded stream: Convoy's own mixing function over a counter.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 { state &+= 1; return PhiloxRandom.mix(state) }
    }

    /// Decodes `bytes`; a result must be an error of ours, or tensors whose element counts match their shapes.
    func checkDecodes(_ bytes: Data) {
        do {
            let file = try SafeTensors.decode(bytes)
            for (_, tensor) in file.tensors { #expect(tensor.count == tensor.shape.reduce(1, *)) }
        } catch is ConvoyError {
        } catch {
            Issue.record("decode threw a \(type(of: error)), not a ConvoyError: \(error)")
        }
    }

    var valid: Data {
        let tensors = ["a": Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6]), "b": Tensor(shape: [4], values: [7, 8, 9, 10])]
        return SafeTensors(tensors: tensors, metadata: ["format": "pt"]).encode()
    }

    @Test func randomBytesAreRefused() {
        var random = Generator(state: 17)
        for _ in 0..<2000 {
            let count = Int.random(in: 0...64, using: &random)
            var bytes = Data((0..<count).map { _ in UInt8.random(in: 0...255, using: &random) })
            // Half of them start with a plausible header length, so the JSON parser is reached too.
            if count >= 8 && Bool.random(using: &random) {
                let length = UInt64(count - 8)
                bytes.replaceSubrange(0..<8, with: withUnsafeBytes(of: length.littleEndian) { Data($0) })
            }
            checkDecodes(bytes)
        }
    }

    @Test func mutationsOfAValidFileAreRefusedOrLoaded() throws {
        let original = valid
        _ = try SafeTensors.decode(original)
        let header = Int(original.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }.littleEndian)
        var random = Generator(state: 29)
        let interesting: [UInt8] = Array("{}[]\",:0123456789-.eE ".utf8) + [0, 0xff, 0x7f]
        for _ in 0..<3000 {
            var bytes = original
            for _ in 0...Int.random(in: 0..<4, using: &random) {
                // Mutations mostly inside the header, where the parser makes its decisions.
                let end = Bool.random(using: &random) ? min(bytes.count, 8 + header) : bytes.count
                guard end > 0 else { break }
                let position = Int.random(in: 0..<end, using: &random)
                switch Int.random(in: 0..<4, using: &random) {
                case 0: bytes[position] = UInt8.random(in: 0...255, using: &random)
                case 1: bytes[position] = interesting.randomElement(using: &random)!
                case 2: bytes.remove(at: position)
                default: bytes.insert(interesting.randomElement(using: &random)!, at: position)
                }
            }
            if Int.random(in: 0..<8, using: &random) == 0 { bytes = bytes.prefix(Int.random(in: 0...bytes.count, using: &random)) }
            checkDecodes(bytes)
        }
    }
}
