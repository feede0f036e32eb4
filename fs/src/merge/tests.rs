use super::*;
use crate::layer::index::{Entry, IndexBuilder};

/// A layer from a compact description: `d:path` dir, `f:path` file, `l:path>target` hard link,
/// `w:path` whiteout, `o:path` opaque directory marker.
fn layer(spec: &[&str]) -> LayerIndex {
    let mut b = IndexBuilder::default();
    for item in spec {
        let (kind, rest) = item.split_once(':').unwrap();
        match kind {
            "d" => b.add(Entry::new(rest.as_bytes(), Kind::Dir)).unwrap(),
            "f" => b.add(Entry::new(rest.as_bytes(), Kind::File)).unwrap(),
            "l" => {
                let (link, target) = rest.split_once('>').unwrap();
                b.add_hard_link(link.as_bytes(), target.as_bytes()).unwrap();
            }
            "w" => b.add_whiteout(rest.as_bytes()),
            "o" => b.add_opaque_dir(rest.as_bytes()),
            _ => panic!("bad spec {item}"),
        }
    }
    b.finish()
}

fn merged(layers: &[LayerIndex]) -> MergedTree {
    MergedTree::build(&layers.iter().collect::<Vec<_>>()).unwrap()
}

/// Every visible path with the layer that provides it.
fn view(tree: &MergedTree) -> Vec<(String, u16)> {
    tree.iter().skip(1).map(|(id, n)| (String::from_utf8(tree.path_of(id)).unwrap(), n.layer)).collect()
}

fn names(list: &[(&str, u16)]) -> Vec<(String, u16)> {
    list.iter().map(|(p, l)| (p.to_string(), *l)).collect()
}

#[test]
fn whiteout_hides_lower_file_and_whole_directory() {
    let t = merged(&[layer(&["d:a", "f:a/x", "f:b", "d:c", "f:c/y"]), layer(&["w:b", "w:c"])]);
    assert_eq!(view(&t), names(&[("a", 0), ("a/x", 0)]));
}

#[test]
fn whiteout_never_hides_its_own_layer() {
    let t = merged(&[layer(&["f:b"]), layer(&["f:b", "w:b"])]);
    assert_eq!(view(&t), names(&[("b", 1)]));
}

#[test]
fn opaque_directory_hides_lower_children_wherever_the_marker_appears() {
    let t = merged(&[layer(&["d:d", "f:d/old", "f:keep"]), layer(&["d:d", "f:d/new", "o:d"])]);
    assert_eq!(view(&t), names(&[("d", 1), ("d/new", 1), ("keep", 0)]));
}

#[test]
fn directory_over_directory_merges_and_file_over_directory_replaces() {
    let t = merged(&[layer(&["d:a", "f:a/x", "d:b", "f:b/y"]), layer(&["d:a", "f:a/z", "f:b"])]);
    assert_eq!(view(&t), names(&[("a", 1), ("a/x", 0), ("a/z", 1), ("b", 1)]));
    assert_eq!(t.children(t.lookup(b"b").unwrap()).len(), 0);
}

#[test]
fn directory_replacing_a_file_and_back() {
    let t = merged(&[layer(&["f:p"]), layer(&["d:p", "f:p/q"]), layer(&["f:p"])]);
    assert_eq!(view(&t), names(&[("p", 2)]));
}

#[test]
fn implicit_parents_and_lookup() {
    let t = merged(&[layer(&["f:x/y/z"])]);
    let z = t.lookup(b"x/y/z").unwrap();
    assert_eq!(t.node(t.lookup(b"x").unwrap()).entry, IMPLICIT);
    assert_eq!(t.path_of(z), b"x/y/z");
    assert_eq!(t.lookup(b"x/nope"), None);
    assert_eq!(t.lookup(b""), Some(ROOT));
}

#[test]
fn hard_links_share_an_inode_and_count_surviving_names() {
    let t = merged(&[layer(&["f:a", "l:b>a", "l:c>a"]), layer(&["w:c"])]);
    let a = t.node(t.lookup(b"a").unwrap());
    let b = t.node(t.lookup(b"b").unwrap());
    assert_eq!(a.inode_node, b.inode_node);
    assert_eq!(a.nlink, 2);
    assert_eq!(b.nlink, 2);
}

#[test]
fn directory_nlink_counts_subdirectories() {
    let t = merged(&[layer(&["d:a", "d:a/b", "d:a/c", "f:a/f"])]);
    assert_eq!(t.node(t.lookup(b"a").unwrap()).nlink, 4);
}

#[test]
fn children_are_sorted_and_numbering_is_deterministic() {
    let spec = ["f:z", "f:a", "d:m", "f:m-x", "f:m/1"];
    let t1 = merged(&[layer(&spec)]);
    let t2 = merged(&[layer(&spec)]);
    let root_names: Vec<&[u8]> = t1.children(ROOT).iter().map(|&c| t1.name(c)).collect();
    assert_eq!(root_names, vec![&b"a"[..], b"m", b"m-x", b"z"]);
    assert_eq!(view(&t1), view(&t2));
    assert_eq!(t1.lookup(b"m/1"), t2.lookup(b"m/1"));
}

#[test]
fn entry_under_a_lower_file_is_refused() {
    let err = MergedTree::build(&[&layer(&["f:a"]), &layer(&["f:a/b"])]).unwrap_err();
    assert_eq!(err, MergeProblem::ParentNotDirectory { layer: 1, entry: b"a/b".to_vec(), parent: b"a".to_vec() });
}

#[test]
fn deep_stacks_resolve() {
    let layers: Vec<LayerIndex> = (0..150)
        .map(|i| layer(&["d:shared", &format!("f:shared/f{i}"), &format!("w:shared/f{}", i.max(1) - 1)]))
        .collect();
    let t = merged(&layers);
    // Each layer deletes the previous layer's file, so only the last one's survives.
    assert_eq!(view(&t), names(&[("shared", 149), ("shared/f149", 149)]));
}
