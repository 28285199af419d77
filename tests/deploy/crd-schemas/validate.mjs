// Validates prometheus-operator custom resources read as a JSON array on stdin against the
// schemas compiled from the operator's CRDs (@kubernetes-models/prometheus-operator).
// Prints a JSON array with one {kind, name, errors} entry per object; exits 0.
import { readFileSync } from "node:fs";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = { PrometheusRule, ServiceMonitor };
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = objects.map((object) => {
  const Model = models[object.kind];
  const name = object.metadata?.name ?? "";
  if (Model === undefined || object.apiVersion !== "monitoring.coreos.com/v1") {
    return { kind: object.kind, name, errors: [`no schema for ${object.apiVersion} ${object.kind}`] };
  }
  try {
    new Model(object).validate();
    return { kind: object.kind, name, errors: [] };
  } catch (error) {
    return { kind: object.kind, name, errors: [String(error.message)] };
  }
});
process.stdout.write(JSON.stringify(results));
