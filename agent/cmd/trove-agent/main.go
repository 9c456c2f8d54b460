// Command trove-agent is the guest agent: the thin relay on every database host (see docs/guest-agent.md).
package main

func main() {}
