// lbctl top's pacing of the connection-table count: a cheap count every frame, an expensive
// one spread out to a twentieth of the time.
import SluiceControl
import Testing

@Suite("lbctl top: when the connection table is counted")
struct ConntrackCountScheduleTests {
    @Test("the first frame counts; a 2 ms count is due every 1 s frame; a 330 ms count (a million flows) waits 6.6 s less half a frame")
    func pacing() {
        let start = ContinuousClock.now
        var schedule = ConntrackCountSchedule()
        #expect(schedule.isDue(at: start, interval: .seconds(1)))

        schedule.counted(at: start, cost: .milliseconds(2))
        #expect(schedule.isDue(at: start + .milliseconds(990), interval: .seconds(1)), "a frame that came a little early still counts")
        #expect(schedule.isDue(at: start + .milliseconds(90), interval: .milliseconds(100)))

        schedule.counted(at: start, cost: .milliseconds(330))
        for frame in 1...6 { #expect(!schedule.isDue(at: start + .seconds(frame), interval: .seconds(1)), "frame \(frame)") }
        #expect(schedule.isDue(at: start + .milliseconds(6_100), interval: .seconds(1)))
        #expect(schedule.isDue(at: start + .seconds(7), interval: .seconds(1)))
        // A long interval: every frame, since each is longer than the pause needed.
        #expect(schedule.isDue(at: start + .seconds(10), interval: .seconds(10)))
    }
}
