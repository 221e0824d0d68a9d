"""Packet drops: skb:kfree_skb with the kernel's drop reason, attributed to
the flow and process where the skb had a socket, else to the network
namespace, interface and the packet's headers."""
