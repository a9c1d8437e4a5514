"""ClientApp: a few gradient steps on the hospital's own data."""

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from toyfl.task import hospital_name, load_data, train as train_fn

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    name = hospital_name(context.node_config, context.run_config)
    x, y = load_data(name)
    w, loss = train_fn(msg.content["arrays"].to_numpy_ndarrays()[0], x, y)
    return Message(RecordDict({
        "arrays": ArrayRecord([w]),
        "metrics": MetricRecord({"loss": loss, "num-examples": len(y)}),
        "info": ConfigRecord({"hospital": name}),
    }), reply_to=msg)
