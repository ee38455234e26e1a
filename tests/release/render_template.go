// Renders an Ollama TEMPLATE with Go's text/template, on data shaped as Ollama passes it (Messages with Role and
// Content, System, Prompt, Response). Reads {"template": ..., "messages": [...], "system": ..., "prompt": ...} as
// JSON on stdin and writes the rendered prompt to stdout. Built and run by tests/release/test_ollama.py.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Values struct {
	Messages []Message
	System   string
	Prompt   string
	Response string
}

type Input struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
	System   string    `json:"system"`
	Prompt   string    `json:"prompt"`
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		os.Stderr.WriteString("bad input: " + err.Error() + "\n")
		os.Exit(2)
	}
	tmpl, err := template.New("ollama").Option("missingkey=error").Parse(in.Template)
	if err != nil {
		os.Stderr.WriteString("parse: " + err.Error() + "\n")
		os.Exit(3)
	}
	values := Values{Messages: in.Messages, System: in.System, Prompt: in.Prompt}
	if err := tmpl.Execute(os.Stdout, values); err != nil {
		os.Stderr.WriteString("execute: " + err.Error() + "\n")
		os.Exit(4)
	}
}
