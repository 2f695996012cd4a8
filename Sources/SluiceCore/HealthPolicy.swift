// Which backends a service's Maglev table leaves out for failing their health check.
// A down backend is left out, unless every backend that could take new flows is down:
// then the table in effect stays (a service that black-holes every new flow helps no
// one; the backends may be fine and the checker's path to them broken).

public enum HealthPolicy {
    /// The addresses to leave out of the table of a service with `backends`, given the
    /// ones found `down` and the ones the table leaves out now (`excludedNow`).
    public static func excluded(_ backends: [Backend], down: Set<IPAddress>,
                                excludedNow: Set<IPAddress>) -> Set<IPAddress> {
        let candidates = Set(backends.filter { $0.weight > 0 }.map(\.address))
        let failing = down.intersection(candidates)
        if failing.count < candidates.count { return failing }
        // All down: keep the table as it is. If it would leave out every backend
        // (a backend set that changed meanwhile), leave out none.
        let kept = excludedNow.intersection(candidates)
        return kept.count < candidates.count ? kept : []
    }
}
