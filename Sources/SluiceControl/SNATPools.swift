// Full NAT's source pools (sl_snat_pools) as apply writes them. An established full-NAT flow
// names its source address by index (sl_ct_entry.snat_index), so an address keeps its slot
// from one apply to the next: a new address takes a freed slot, and only when the pool
// shrinks do the last addresses move down into the holes (their flows then lose their
// source, as the removed addresses' flows do).
import CSluice
import SluiceCore

enum SNATPools {
    /// The two pools (IPv4, IPv6) for `node`, slots kept from `current`.
    static func arrange(current: [sl_snat_pool], node: NodeConfig) -> [sl_snat_pool] {
        let ports = node.effectiveSNATPorts
        return [(IPAddress.Family.v4, node.snatV4), (.v6, node.snatV6)].enumerated().map { index, pair in
            let kept = index < current.count ? current[index].addresses(family: pair.0) : []
            return sl_snat_pool(addresses: slots(current: kept, desired: pair.1), ports: ports)
        }
    }

    /// `desired` in slot order: each address of `current` that stays keeps its slot, new ones
    /// fill the holes, then the tail fills what is left.
    static func slots(current: [IPAddress], desired: [IPAddress]) -> [IPAddress] {
        let wanted = Set(desired), had = Set(current)
        var slots: [IPAddress?] = current.map { wanted.contains($0) ? $0 : nil }
        var fresh = desired.filter { !had.contains($0) }[...]
        for i in slots.indices where slots[i] == nil {
            guard let next = fresh.popFirst() else { break }
            slots[i] = next
        }
        slots += fresh.map { Optional($0) }
        func trim() { while let last = slots.last, last == nil { slots.removeLast() } }
        trim()
        while let hole = slots.firstIndex(where: { $0 == nil }) {
            slots[hole] = slots.removeLast()
            trim()
        }
        return slots.compactMap { $0 }
    }
}
