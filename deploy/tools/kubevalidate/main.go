// Command kubevalidate checks rendered Kubernetes manifests offline: every document whose kind
// the Kubernetes API types know (Deployment, Job, Secret, Service, ConfigMap,
// PodDisruptionBudget, NetworkPolicy, ...) is decoded strictly into those types, so an unknown
// or misspelt field, a duplicate field or a wrong type is an error. Documents of custom resources
// (ServiceMonitor, PrometheusRule, ScaledObject) are checked for apiVersion, kind and a name.
//
// Usage: helm template ... | kubevalidate   (exit 1 and one line per problem on failure)
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// customKinds are the custom resources the chart may render; their schemas live in operators.
var customKinds = map[string]bool{
	"monitoring.coreos.com/v1/ServiceMonitor": true,
	"monitoring.coreos.com/v1/PrometheusRule": true,
	"keda.sh/v1alpha1/ScaledObject":           true,
}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

func main() {
	decoder := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(os.Stdin))
	problems, checked := 0, 0
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "kubevalidate: reading input: %v\n", err)
			os.Exit(2)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		var h header
		if err := yaml.Unmarshal(doc, &h); err != nil {
			fmt.Printf("%s: invalid YAML: %v\n", source(doc), err)
			problems++
			continue
		}
		name := fmt.Sprintf("%s/%s %q", h.APIVersion, h.Kind, h.Metadata.Name)
		checked++
		if h.APIVersion == "" || h.Kind == "" || h.Metadata.Name == "" {
			fmt.Printf("%s: apiVersion, kind and metadata.name are required\n", name)
			problems++
			continue
		}
		gv, err := schema.ParseGroupVersion(h.APIVersion)
		if err != nil {
			fmt.Printf("%s: %v\n", name, err)
			problems++
			continue
		}
		if !scheme.Scheme.Recognizes(gv.WithKind(h.Kind)) {
			if !customKinds[h.APIVersion+"/"+h.Kind] {
				fmt.Printf("%s: unknown kind (not a Kubernetes API type nor a known custom resource)\n", name)
				problems++
			}
			continue
		}
		if _, _, err := decoder.Decode(doc, nil, nil); err != nil {
			fmt.Printf("%s: %v\n", name, err)
			problems++
		}
	}
	if checked == 0 {
		fmt.Println("no manifests in the input")
		os.Exit(1)
	}
	if problems > 0 {
		os.Exit(1)
	}
	fmt.Printf("%d manifests valid\n", checked)
}

// source is the "# Source: <template>" line helm writes above each document, if any.
func source(doc []byte) string {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if s, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("# Source: ")); ok {
			return string(s)
		}
	}
	return "document"
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line)
		}
	}
	return bytes.Join(out, []byte("\n"))
}
