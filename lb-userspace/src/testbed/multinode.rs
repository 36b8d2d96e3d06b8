//! Several nodes in namespaces: for NodePort and cross-node tests.
