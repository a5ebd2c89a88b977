import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

/// The bit-at-a-time CRC-32C, the definition the table-driven one must agree with.
private func referenceCRC32C(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in bytes {
        crc ^= UInt32(byte)
        for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
    }
    return ~crc
}

private func fixture(_ name: String) -> String {
    Bundle.module.resourceURL!.appendingPathComponent("Fixtures/tensorboard/" + name).path
}

@Suite struct TensorBoardEventTests {
    @Test func crc32cMatchesKnownVectors() {
        // RFC 3720 (iSCSI) appendix B.4 and the common check value.
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
        #expect(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }) == 0x113F_DB5C)
        #expect(CRC32C.checksum([]) == 0)
    }

    @Test func slicingByEightAgreesWithTheBitwiseDefinition() {
        var generator = SystemRandomNumberGenerator()
        for length in [1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4097] {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            #expect(CRC32C.checksum(bytes) == referenceCRC32C(bytes), "length \(length)")
        }
    }

    @Test func framingRoundTrips() throws {
        let payloads: [[UInt8]] = [[], [0], Array("brain.Event:2".utf8), (0..<5000).map { UInt8($0 % 251) }]
        let file = payloads.flatMap(TFRecord.frame)
        #expect(file.count == payloads.reduce(0) { $0 + $1.count + 16 })
        #expect(try TFRecord.records(in: file, path: "memory") == payloads)
        // The masked CRC of the 8 length bytes sits right after them, little endian.
        let first = TFRecord.frame(Array("abc".utf8))
        let length: [UInt8] = [3, 0, 0, 0, 0, 0, 0, 0]
        let crc = CRC32C.checksum(length)
        let masked = ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
        #expect(Array(first[8..<12]) == [UInt8(masked & 0xFF), UInt8((masked >> 8) & 0xFF), UInt8((masked >> 16) & 0xFF), UInt8(masked >> 24)])
    }

    @Test func corruptAndTruncatedRecordsAreDetected() {
        let good = TFRecord.frame(Array("first".utf8)) + TFRecord.frame(Array("second record".utf8))
        func failure(_ bytes: [UInt8]) -> String? {
            do { _ = try TFRecord.records(in: bytes, path: "events"); return nil } catch { return "\(error)" }
        }
        var flippedData = good
        flippedData[14] ^= 0x01
        #expect(failure(flippedData)?.contains("CRC of its 5 data bytes") == true)
        var flippedLength = good
        flippedLength[0] ^= 0x02
        #expect(failure(flippedLength)?.contains("CRC of its length") == true)
        var flippedChecksum = good
        flippedChecksum[good.count - 1] ^= 0x80
        #expect(failure(flippedChecksum)?.contains("record 1") == true)
        for cut in [1, 4, 13, good.count - 21 - 1] {
            #expect(failure(Array(good.dropLast(cut)))?.contains("truncated") == true, "cut \(cut)")
        }
    }

    @Test func eventsRoundTripThroughTheProtobufEncoding() throws {
        let events = [
            TensorBoardEvent(wallTime: 1_700_000_000.25, fileVersion: "brain.Event:2"),
            TensorBoardEvent(wallTime: 1_700_000_001.5, step: 42, scalars: [.init(tag: "train/loss", value: 2.5), .init(tag: "train/learning_rate", value: 6e-4)]),
            TensorBoardEvent(wallTime: 0, step: -3, scalars: [.init(tag: "ünïcode/τ", value: -.infinity)]),
            TensorBoardEvent(wallTime: 1, step: Int64.max, scalars: [.init(tag: "", value: .greatestFiniteMagnitude)]),
        ]
        for event in events { #expect(try TensorBoardEvent(decoding: event.encoded()) == event) }
        #expect(throws: (any Error).self) { try TensorBoardEvent(decoding: [0x0A, 0x05, 0x41]) }
    }

    /// A file PyTorch's SummaryWriter wrote (scripts/make_tensorboard_fixture.py): every scalar, step and wall
    /// time as TensorBoard's own reader gave them (expected.json).
    @Test func readsTensorBoardsOwnEventFile() throws {
        let events = try EventFileReader.events(at: fixture("events.out.tfevents.fixture"))
        #expect(events.first?.fileVersion == "brain.Event:2")
        let data = try #require(FileManager.default.contents(atPath: fixture("expected.json")))
        let expected = try #require(try JSONSerialization.jsonObject(with: data) as? [String: [[String: Any]]])
        var count = 0
        for (tag, points) in expected {
            let decoded = events.compactMap { event in event.scalars.first { $0.tag == tag }.map { (event.step, event.wallTime, $0.value) } }
            #expect(decoded.count == points.count, "\(tag)")
            for (point, actual) in zip(points, decoded) {
                #expect(actual.0 == Int64(point["step"] as! Int))
                #expect(actual.1 == (point["wall_time"] as! Double))
                #expect(actual.2 == Float(point["value"] as! Double), "\(tag) at step \(actual.0)")
                count += 1
            }
        }
        #expect(count == 10)
    }

    @Test func writerFramesEveryEventAndStartsWithTheFileVersion() throws {
        let directory = scratchDirectory("events")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let writer = try EventFileWriter(directory: directory, wallTime: 1_700_000_000)
        try writer.write(step: 3, scalars: [.init(tag: "train/loss", value: 1.25)], wallTime: 1_700_000_010)
        try writer.write(step: 4, scalars: [], wallTime: 1_700_000_011)  // nothing to write: no event
        #expect(URL(fileURLWithPath: writer.path).lastPathComponent.hasPrefix("events.out.tfevents.1700000000."))
        #expect(EventFileReader.eventFiles(in: directory) == [writer.path])
        // Each record reaches the file when written: read back while the writer is still open.
        let events = try EventFileReader.events(at: writer.path)
        #expect(events == [TensorBoardEvent(wallTime: 1_700_000_000, fileVersion: "brain.Event:2"),
                           TensorBoardEvent(wallTime: 1_700_000_010, step: 3, scalars: [.init(tag: "train/loss", value: 1.25)])])
        // A second writer in the same second gets a file of its own.
        let second = try EventFileWriter(directory: directory, wallTime: 1_700_000_000)
        #expect(second.path != writer.path)
        #expect(EventFileReader.eventFiles(in: directory).count == 2)
    }

    @Test func anUnwritableDirectoryIsAOneLineError() {
        let missing = scratchDirectory("no-such-directory")
        do {
            _ = try EventFileWriter(directory: missing)
            Issue.record("an event file was created in a directory that does not exist")
        } catch {
            #expect("\(error)".contains("cannot create the TensorBoard event file \(missing)/events.out.tfevents."))
            #expect("\(error)".contains("No such file or directory"))
        }
    }

    /// A training run's event file holds exactly the numbers metrics.jsonl holds, at the same steps.
    @Test func trainingWritesTheMetricsAsTensorBoardScalars() throws {
        let output = scratchDirectory("tb-train")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = try tinyConfiguration(output: output, steps: 6)
        configuration.evalEvery = 3
        configuration.lossScale = "dynamic"
        _ = try Trainer(configuration: configuration).run()
        let files = EventFileReader.eventFiles(in: output)
        #expect(files.count == 1)
        let events = try EventFileReader.events(at: try #require(files.first))
        #expect(events.first?.fileVersion == "brain.Event:2")
        let records = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        var expected: [(Int64, String, Float)] = []
        for record in records {
            for (key, tag) in MetricsLog.scalarTags {
                if let value = record[key] as? Double { expected.append((Int64(record["step"] as! Int), tag, Float(value))) }
            }
        }
        let written = events.dropFirst().flatMap { event in event.scalars.map { (event.step, $0.tag, $0.value) } }
        #expect(written.count == expected.count)
        for (a, b) in zip(written, expected) { #expect(a == b) }
        let tags = Set(written.map(\.1))
        for tag in ["train/loss", "validation/loss", "train/learning_rate", "train/tokens_per_second", "train/grad_norm", "train/loss_scale"] {
            #expect(tags.contains(tag), "no \(tag)")
        }
        // --overwrite starts the curves afresh: the old event file goes with the old metrics.
        configuration.overwrite = true
        configuration.steps = 2
        _ = try Trainer(configuration: configuration).run()
        let rewritten = EventFileReader.eventFiles(in: output)
        #expect(rewritten.count == 1)
        #expect(try EventFileReader.events(at: rewritten[0]).map(\.step).max() == 2)
    }
}
